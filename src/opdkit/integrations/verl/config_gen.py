"""``opdkit verl-config CONFIG [key=value ...]``: the verl launch command for an opdkit training config.

Users never edit verl YAML: the generator reads the same config ``opdkit train`` reads (a YAML file or a
packaged preset such as ``paper/scope``, plus dotted overrides), validates it with opdkit's own loader
(``opdkit.train.config``; same errors, same defaults), and prints ``python -m verl.trainer.main_ppo`` with
the Hydra overrides of verl 0.9.1's ``ppo_trainer`` config. It only emits text; verl is never imported.

What verl needs beyond an opdkit config goes in an extra top-level ``verl:`` section (``VERL_KEYS``: cluster
layout, rollout engine, the teacher's model path for verl's teacher pool, SC weighting of grpo/opd, raw
pass-through overrides); it is removed before opdkit validates the rest.

    model.student -> actor_rollout_ref.model.path    data.train / data.eval -> data.train_files / val_files
    rollout.prompts_per_step, n, temperature, top_p, top_k, max_new_tokens -> data / rollout keys
    optim.* -> actor_rollout_ref.actor.optim.* and the PPO mini/micro batch sizes
    steps, seed, checkpoint_every, keep_checkpoints, eval.* -> trainer / data / val_kwargs keys
    method.* -> config_methods.PLANS (estimators, distillation losses, the opdkit_sync trainer) and
        config_sdpo (the SDPO family: the opdkit_sdpo trainer; self_teacher.* -> algorithm.opdkit_sdpo)

Keys with no verl counterpart are left out: ``threads``, ``log_every``, ``model.dtype`` and ``device``
(verl trains in bf16 mixed precision), ``data.task``, ``teacher`` server settings,
``warmstart``, ``eval.max_new_tokens`` and ``eval.num_problems``, and opdkit's own memory switches
(``rollout.kv_cache_tokens``, ``eval.batch_size``, ``optim.micro_batch_tokens``,
``model.activation_checkpointing``: verl has its own, passed through ``verl.*``). Settings verl cannot
honour (a teacher temperature other than 1, a log-prob temperature different from the rollout's, no
gradient clipping) raise.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opdkit.integrations.verl.config_methods import (
    PLANS,
    SC_DIVERGENCES,
    SC_WEIGHTINGS,
    ConfigError,
)
from opdkit.integrations.verl.config_sdpo import self_teacher_node  # also registers the SDPO plans
from opdkit.integrations.verl.sdpo_params import CONFIG_NODE as SDPO_NODE

__all__ = ["VERL_KEYS", "ConfigError", "VerlCommand", "format_value", "verl_command", "verl_overrides"]

VERL_KEYS: dict[str, Any] = {
    "nnodes": 1,  # trainer.nnodes: nodes of the student (actor + rollout) pool
    "n_gpus_per_node": 8,  # trainer.n_gpus_per_node
    "engine": "vllm",  # rollout engine: vllm | sglang
    "tensor_parallel": 1,  # rollout tensor parallel size
    "gpu_memory_utilization": 0.5,  # rollout KV-cache share of each GPU
    "max_token_len_per_gpu": 0,  # token budget of dynamic micro-batches (optim.micro_batch_size: 0); 0 = auto
    "teacher_path": "",  # the teacher model verl's teacher pool serves ('' = teacher.path / teacher.model)
    "teacher_nnodes": 1,  # distillation.nnodes
    "teacher_n_gpus_per_node": 1,  # distillation.n_gpus_per_node
    "teacher_tensor_parallel": 1,  # teacher tensor parallel size (replicas = pool GPUs / this)
    "sc_weighting": "none",  # grpo / opd only: none | pass_rate | hard_filter (SC-SDPO's weights, §6)
    "sc_alpha": 0.5,  # α of (p(1-p))^α
    "sc_divergence": "k1",  # opd + sc_weighting: k1 (PG reward) | k3 | forward_kl_topk (supervised)
    "sc_topk": 100,  # top-k of forward_kl_topk
    "project_name": "opdkit",
    "experiment_name": "",  # '' = opdkit-<method>
    "logger": ["console"],
    "extra": [],  # raw 'key=value' verl overrides, appended last
}
ENGINES = ("vllm", "sglang")
TEACHER_TEMPERATURE = 1.0  # verl's teacher pool scores at temperature 1 (teacher_manager.py)
TOTAL_EPOCHS = 10_000  # opdkit counts steps: let trainer.total_training_steps end the run, never the epochs


class VerlCommand:
    """The launch command: ``argv`` (python -m verl.trainer.main_ppo ...) and the overrides alone."""

    def __init__(self, overrides: list[str]) -> None:
        self.overrides = overrides
        self.argv = ["python", "-m", "verl.trainer.main_ppo", *overrides]

    def render(self) -> str:
        """One shell command: the launcher on the first line, then one override per line."""
        return " \\\n    ".join(
            ["python -m verl.trainer.main_ppo", *(shlex.quote(o) for o in self.overrides)]
        )


@dataclass(frozen=True)
class _Inputs:
    cfg: Any  # opdkit.train.config.TrainConfig
    verl: dict[str, Any]


def _verl_section(raw: Any) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"verl: expected a mapping of keys, got {raw!r}")
    unknown = sorted(set(raw) - set(VERL_KEYS))
    if unknown:
        raise ConfigError(f"unknown key 'verl.{unknown[0]}'; valid keys of verl: {', '.join(VERL_KEYS)}")
    verl = {**VERL_KEYS, **raw}
    for key, choices in (
        ("engine", ENGINES),
        ("sc_weighting", SC_WEIGHTINGS),
        ("sc_divergence", SC_DIVERGENCES),
    ):
        if verl[key] not in choices:
            raise ConfigError(f"verl.{key}: unknown {verl[key]!r}; valid: {', '.join(choices)}")
    bad = [item for item in verl["extra"] if not isinstance(item, str) or "=" not in item]
    if bad:
        raise ConfigError(f"verl.extra: each entry must be a 'key=value' string, got {bad[0]!r}")
    return verl


def _load(raw: Mapping[str, Any], overrides: Sequence[str]) -> _Inputs:
    """Validate with opdkit's own config loader; the ``verl`` section is split off first."""
    from opdkit.train.config import config_from_dict
    from opdkit.train.configio import ConfigError as TrainConfigError
    from opdkit.train.configio import apply_overrides

    if not isinstance(raw, Mapping):
        raise ConfigError(f"the config must be a mapping of sections, got {type(raw).__name__}")
    try:
        merged = apply_overrides(dict(raw), overrides)
        verl = _verl_section(merged.pop("verl", None))
        return _Inputs(cfg=config_from_dict(merged), verl=verl)
    except TrainConfigError as exc:
        raise ConfigError(str(exc)) from None


def _is_parquet(path: str) -> bool:
    return path.endswith(".parquet")


def _data(cfg: Any) -> dict[str, Any]:
    """Data files (verl's RL parquet layout), lengths and validation."""
    if not _is_parquet(cfg.data.train):
        raise ConfigError(
            "data.train: verl reads a parquet file in its RL layout (data_source, prompt, reward_model, "
            f"...), got {cfg.data.train!r}; see docs/verl.md"
        )
    validate = _is_parquet(cfg.data.eval)  # a benchmark name or the synthetic task has no verl file
    out = {
        "data.train_files": cfg.data.train,
        "data.val_files": cfg.data.eval if validate else cfg.data.train,
        "data.train_batch_size": cfg.rollout.prompts_per_step,
        "data.max_prompt_length": cfg.data.max_prompt_tokens,
        "data.max_response_length": cfg.rollout.max_new_tokens,
        "data.seed": cfg.seed,
        "trainer.val_before_train": validate and cfg.eval.at_start,
        "trainer.test_freq": (cfg.eval.every or cfg.steps) if validate else -1,
    }
    for key, value in (cfg.model.chat_template_kwargs or {}).items():
        # verl's node is an empty struct dict: each key is added with '+' (a whole dict would not merge)
        out[f"+data.apply_chat_template_kwargs.{key}"] = value
    return out


def _rollout(cfg: Any, verl: dict[str, Any]) -> dict[str, Any]:
    rollout, prefix = cfg.rollout, "actor_rollout_ref.rollout."
    if rollout.logprob_temperature is not None and rollout.logprob_temperature != rollout.temperature:
        raise ConfigError("rollout.logprob_temperature: verl scores the student at the rollout temperature")
    return {
        f"{prefix}name": verl["engine"],
        f"{prefix}n": rollout.n,
        f"{prefix}temperature": rollout.temperature,
        f"{prefix}top_p": rollout.top_p,
        f"{prefix}top_k": rollout.top_k or -1,  # opdkit 0 = off, verl -1 = off
        f"{prefix}tensor_model_parallel_size": verl["tensor_parallel"],
        f"{prefix}gpu_memory_utilization": verl["gpu_memory_utilization"],
        f"{prefix}val_kwargs.n": cfg.eval.k,
        f"{prefix}val_kwargs.temperature": cfg.eval.temperature,
        f"{prefix}val_kwargs.top_p": cfg.eval.top_p,
        f"{prefix}val_kwargs.do_sample": True,
    }


def _optim(cfg: Any, verl: dict[str, Any]) -> dict[str, Any]:
    """Optimizer and batch sizes: opdkit's mini_batches splits a step's prompts into PPO mini-batches."""
    optim, actor = cfg.optim, "actor_rollout_ref.actor."
    if cfg.rollout.prompts_per_step % optim.mini_batches:
        raise ConfigError(
            f"optim.mini_batches={optim.mini_batches} must divide rollout.prompts_per_step="
            f"{cfg.rollout.prompts_per_step} (verl's PPO mini-batches count whole prompts)"
        )
    if optim.grad_clip <= 0:
        raise ConfigError("optim.grad_clip: verl always clips the gradient norm; give a positive value")
    out = {
        f"{actor}ppo_mini_batch_size": cfg.rollout.prompts_per_step // optim.mini_batches,
        f"{actor}optim.lr": optim.lr,
        f"{actor}optim.weight_decay": optim.weight_decay,
        f"{actor}optim.betas": list(optim.betas),
        f"{actor}optim.clip_grad": optim.grad_clip,
        f"{actor}use_kl_loss": False,  # every seed experiment: KL coefficient 0 (§2.4)
        f"{actor}entropy_coeff": 0,
        "algorithm.use_kl_in_reward": False,
    }
    if optim.warmup_steps:
        out[f"{actor}optim.lr_warmup_steps"] = optim.warmup_steps
    if optim.micro_batch_size:
        out[f"{actor}ppo_micro_batch_size_per_gpu"] = optim.micro_batch_size
        out["actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu"] = optim.micro_batch_size
        return out
    # 0 = "the whole mini-batch at once": on GPUs, token-budgeted micro-batches (the loss is the same,
    # verl normalises by the mini-batch's global token count).
    budget = verl["max_token_len_per_gpu"] or max(
        16384, cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    )
    out.update({
        f"{actor}use_dynamic_bsz": True,
        f"{actor}ppo_max_token_len_per_gpu": budget,
        "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz": True,
        "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu": budget,
    })  # fmt: skip
    return out


def _trainer(cfg: Any, verl: dict[str, Any]) -> dict[str, Any]:
    return {
        "trainer.total_training_steps": cfg.steps,
        "trainer.total_epochs": TOTAL_EPOCHS,
        "trainer.save_freq": cfg.checkpoint_every or cfg.steps,  # opdkit 0 = only at the end
        "trainer.max_actor_ckpt_to_keep": cfg.keep_checkpoints,
        "trainer.nnodes": verl["nnodes"],
        "trainer.n_gpus_per_node": verl["n_gpus_per_node"],
        "trainer.project_name": verl["project_name"],
        "trainer.experiment_name": verl["experiment_name"] or f"opdkit-{cfg.method.name}",
        "trainer.logger": list(verl["logger"]),
        "trainer.v1.trainer_mode": "sync",
    }


def _teacher(cfg: Any, verl: dict[str, Any]) -> dict[str, Any]:
    """verl's teacher pool serves the teacher itself: it needs the model, not a server URL."""
    teacher = cfg.teacher
    path = verl["teacher_path"] or (teacher.path if teacher.kind == "local" else teacher.model)
    if not path or path == "tiny":
        raise ConfigError(
            f"method {cfg.method.name} needs a teacher model for verl's teacher pool: set verl.teacher_path "
            "(or teacher.path for kind local, teacher.model for kind server)"
        )
    if teacher.temperature is not None and teacher.temperature != TEACHER_TEMPERATURE:
        raise ConfigError("teacher.temperature: verl's teacher pool scores at temperature 1.0")
    prefix = "distillation.teacher_models.teacher_model."
    return {
        f"{prefix}model_path": path,
        f"{prefix}inference.tensor_model_parallel_size": verl["teacher_tensor_parallel"],
        "distillation.nnodes": verl["teacher_nnodes"],
        "distillation.n_gpus_per_node": verl["teacher_n_gpus_per_node"],
    }


#: Strings Hydra's override grammar takes unquoted (paths, model ids); anything else (``~``, spaces, commas,
#: brackets, quotes) is single-quoted so Hydra reads it as one string.
_HYDRA_PLAIN = re.compile(r"[A-Za-z0-9_./:@+\-]+")


def _ref_batching(merged: dict[str, Any]) -> dict[str, Any]:
    """The ref model (the SDPO family's self-teacher) batches like the rollout's log-prob pass."""
    keys = ("log_prob_micro_batch_size_per_gpu", "log_prob_use_dynamic_bsz", "log_prob_max_token_len_per_gpu")
    rollout, ref = "actor_rollout_ref.rollout.", "actor_rollout_ref.ref."
    return {f"{ref}{k}": merged[f"{rollout}{k}"] for k in keys if f"{rollout}{k}" in merged}


def format_value(value: Any) -> str:
    """A Python value in Hydra override syntax: true/false, null, [a,b], {k:v}, numbers, quoted strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and not _HYDRA_PLAIN.fullmatch(value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def verl_overrides(raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> list[str]:
    """The Hydra overrides (``key=value``) that run the opdkit config ``raw`` (+ dotted ``overrides``) on
    verl 0.9.1."""
    inputs = _load(raw, overrides)
    cfg, verl = inputs.cfg, inputs.verl
    if cfg.method.name not in PLANS:
        raise ConfigError(
            f"method.name {cfg.method.name!r} has no verl mapping; valid: {', '.join(PLANS.names())}"
        )
    plan = PLANS.get(cfg.method.name)(cfg.method, verl)
    merged = {"actor_rollout_ref.model.path": cfg.model.student}
    for part in (_data(cfg), _rollout(cfg, verl), _optim(cfg, verl), _trainer(cfg, verl)):
        merged.update(part)
    if plan.needs_teacher:
        merged.update(_teacher(cfg, verl))
    if plan.needs_self_teacher:
        merged.update({f"+{SDPO_NODE}.{k}": v for k, v in self_teacher_node(cfg.self_teacher).items()})
        merged.update(_ref_batching(merged))
    merged.update(plan.overrides)
    return [f"{key}={format_value(value)}" for key, value in merged.items()] + list(verl["extra"])


def verl_command(raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> VerlCommand:
    """``python -m verl.trainer.main_ppo`` with ``verl_overrides(raw, overrides)``."""
    return VerlCommand(verl_overrides(raw, overrides))
