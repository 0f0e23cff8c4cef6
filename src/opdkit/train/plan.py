"""``opdkit plan``: what a training config needs on one device, from the model's config alone (no weights).

The arithmetic is ``core.memory.plan_memory``; here the run's shape is read off a ``TrainConfig`` and the
student's (and a local teacher's) dimensions off their ``config.json``::

    report = plan_run(load_config("paper/sc_sdpo", ["model.student=/models/Qwen3-8B"]), memory_gb=80)
    print(report.text)   # per item, per phase, the peak, and whether it fits
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from opdkit.core.memory import MemoryPlan, ModelDims, RunShape, dims_from_config, plan_memory
from opdkit.train.config import TrainConfig
from opdkit.train.methods import METHODS
from opdkit.train.precision import compute_dtype

GB = 1e9


class PlanError(ValueError):
    """The model's dimensions cannot be read (no local config)."""


def load_dims(path: str) -> ModelDims:
    """Dimensions from a model directory (``AutoConfig``, so the architecture's defaults apply) or from a
    ``config.json`` file."""
    p = Path(path)
    if p.is_file():
        return dims_from_config(json.loads(p.read_text(encoding="utf-8")))
    if (p / "config.json").is_file():
        from transformers import AutoConfig

        return dims_from_config(AutoConfig.from_pretrained(p))
    raise PlanError(
        f"{path!r} is not a local model directory or config.json: set model.student to a downloaded model "
        "(or pass --model-config CONFIG.json)"
    )


def run_shape(cfg: TrainConfig, teacher: ModelDims | None) -> RunShape:
    """The per-device shape of ``cfg``'s run (``core.memory.RunShape``)."""
    r, o, e = cfg.rollout, cfg.optim, cfg.eval
    rows = r.prompts_per_step * r.n
    width = cfg.data.max_prompt_tokens + r.max_new_tokens
    micro = o.micro_batch_size or rows
    if o.micro_batch_tokens > 0:
        micro = min(micro, max(1, o.micro_batch_tokens // width))
    method = METHODS.get(cfg.method.name)
    copies = int(method.uses_self_teacher and cfg.self_teacher.weights != "live")
    return RunShape(
        rows=rows, prompt_tokens=cfg.data.max_prompt_tokens, response_tokens=r.max_new_tokens,
        eval_rows=e.batch_size * e.k, eval_response_tokens=e.max_new_tokens or r.max_new_tokens,
        micro_rows=micro, compute_bytes=compute_dtype(cfg.model.dtype).itemsize, self_teacher_copies=copies,
        teacher=teacher if method.uses_teacher else None, cache_tokens=r.kv_cache_tokens,
        checkpointing=cfg.model.activation_checkpointing, hidden_state_losses=cfg.model.hidden_state_losses,
    )  # fmt: skip


@dataclass(frozen=True)
class PlanReport:
    plan: MemoryPlan
    shape: RunShape
    fits: bool
    text: str


def plan_run(cfg: TrainConfig, memory_gb: float, *, model_config: str | None = None) -> PlanReport:
    """The memory plan of ``cfg`` against ``memory_gb`` of device memory, with its printed form."""
    dims = load_dims(model_config or cfg.model.student)
    teacher = None
    if cfg.teacher.kind == "local" and METHODS.get(cfg.method.name).uses_teacher:
        teacher = load_dims(cfg.teacher.path) if cfg.teacher.path not in ("", "tiny") else dims
    shape = run_shape(cfg, teacher)
    plan = plan_memory(dims, shape)
    fits = plan.peak <= memory_gb * GB
    return PlanReport(plan, shape, fits, _render(cfg, dims, shape, plan, memory_gb, fits))


def _lines(title: str, items: dict[str, int]) -> list[str]:
    return [title, *(f"  {k:<30s} {v / GB:10.2f} GB" for k, v in items.items())]


def _render(cfg, dims: ModelDims, shape: RunShape, plan: MemoryPlan, memory_gb: float, fits: bool) -> str:
    width = shape.prompt_tokens + shape.response_tokens
    eval_width = shape.prompt_tokens + shape.eval_response_tokens
    head = (
        f"{cfg.method.name}: {plan.parameters / 1e9:.2f} B parameters (hidden {dims.hidden}, {dims.layers} "
        f"layers, {dims.heads}/{dims.kv_heads} heads x {dims.head_dim}, MLP {dims.intermediate}, vocab "
        f"{dims.vocab}), compute {cfg.model.dtype}"
    )
    titles = {
        "rollout": f"rollout ({shape.rows} rows x {width} tokens"
        + (f", chunks of {shape.cache_tokens} cache tokens)" if shape.cache_tokens else ", all at once)"),
        "evaluation": f"evaluation ({shape.eval_rows} rows x {eval_width} tokens)",
        "update": f"update (micro-batch {shape.micro_rows} rows x {width} tokens"
        + (", activation checkpointing)" if shape.checkpointing else ")"),
    }
    lines = [head, *_lines("resident", plan.resident)]
    for name, items in plan.phases.items():
        lines += _lines(titles[name], items)
    verdict = "fits" if fits else "does NOT fit"
    lines.append(
        f"peak (resident + {plan.peak_phase}): {plan.peak / GB:.2f} GB; {verdict} in {memory_gb:g} GB "
        "per device"
    )
    if not fits:
        lines += _advice(dims, shape, plan, memory_gb)
    return "\n".join(lines)


def _advice(dims: ModelDims, shape: RunShape, plan: MemoryPlan, memory_gb: float) -> list[str]:
    free = memory_gb * GB - sum(plan.resident.values())
    out = []
    if free > 0 and plan.peak_phase in ("rollout", "evaluation"):
        tokens = int(0.9 * free) // dims.kv_bytes_per_token(shape.compute_bytes)
        out.append(
            f"  rollouts fit in chunks: rollout.kv_cache_tokens={tokens} (0, the default: half the free "
            "memory)"
        )
    if plan.peak_phase == "update" and not shape.checkpointing:
        out.append("  the update may fit with model.activation_checkpointing=true or a smaller micro-batch")
    if free <= 0:
        out.append("  weights, optimizer and teachers alone exceed one device")
    out.append("  one device cannot hold this run as planned: shard it over several GPUs with verl, "
               "'opdkit verl-config CONFIG [overrides]' prints the launch command")  # fmt: skip
    return out
