"""The training configuration: frozen dataclasses, one documented field each, loaded from YAML + overrides.

Sections: ``model``, ``data``, ``rollout``, ``optim``, ``teacher`` (external teacher for OPD/SCOPE),
``self_teacher`` (SDPO family and SRPO), ``method`` (its parameters depend on ``method.name``; see
``opdkit.train.methods``), ``eval``, ``warmstart`` and run-level keys.
Presets live in ``configs/{tiny,paper}/*.yaml``.

    cfg = load_config("tiny/scope", ["rollout.n=8", "method.tau=0.5"])  # a preset name or a YAML path

``opdkit train --help-config`` prints every key with its default and documentation.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from opdkit.tasks import TaskSpec
from opdkit.teachers.self_teacher import SelfTeacherOptions
from opdkit.train.configio import ConfigError, apply_overrides, doc, from_dict, load_yaml, section
from opdkit.train.methods import METHODS, MethodConfig
from opdkit.warmstart import WarmStartConfig


def _device_problem(name: str) -> str | None:
    """Why ``name`` is not a torch device string ('auto' allowed), or None."""
    import torch

    if name == "auto":
        return None
    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        return f"{name!r} is not a device; valid: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'"
    return None


def _task_problem(name: str) -> str | None:
    from opdkit.tasks import TASKS

    return None if name in TASKS else f"unknown task {name!r}; valid tasks: {', '.join(TASKS.names())}"


@dataclass(frozen=True)
class ModelConfig:
    student: str = doc(
        "tiny", "student: a Hugging Face model directory, or 'tiny' (warm-started on the task)"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = doc(
        "float32",
        "compute dtype: the student's weights and AdamW states stay float32 (master copy); with bfloat16 or "
        "float16 every forward runs under torch.autocast in that dtype (float16 with a dynamic loss scaler); "
        "a local external teacher is loaded in it",
    )
    device: str = doc(
        "auto", "'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available)", check=_device_problem
    )
    hidden_state_losses: bool = doc(
        True, "compute log-probs and divergences from hidden states in token chunks (never full logits)"
    )
    chat_template_kwargs: Mapping[str, Any] | None = doc(
        None, "extra chat-template arguments for every prompt, e.g. {enable_thinking: false} for Qwen3"
    )
    activation_checkpointing: bool = doc(
        False, "recompute each layer's activations in the backward pass (keeps only layer inputs)"
    )


@dataclass(frozen=True)
class TaskConfig:
    name: str = doc(
        "addition", "synthetic task: addition, addition_mix, countdown or sorting", check=_task_problem
    )
    style: Literal["boxed", "mcq", "tool"] = doc("boxed", "answer style (selects the verifier family)")
    difficulty: int | None = doc(
        2, "difficulty knob (addition: digits; countdown: numbers; sorting: length)", ge=1
    )
    instruction: bool = doc(False, "end each question with the style's format instruction")
    train_size: int = doc(
        2000, "training problems generated (with model.student=tiny: the warm start's pool)", ge=1
    )
    eval_size: int = doc(
        100, "held-out problems generated (with model.student=tiny: the warm start's report set)", ge=0
    )

    def spec(self) -> TaskSpec:
        return TaskSpec(
            task=self.name, difficulty=self.difficulty, style=self.style, instruction=self.instruction
        )


@dataclass(frozen=True)
class DataConfig:
    train: str = doc("task", "'task' (the synthetic task below), a benchmark name or a data file path")
    eval: str = doc("task", "held-out data: 'task', a benchmark name, a file path, or '' for none")
    task: TaskConfig = section(TaskConfig, "the synthetic task used when train/eval is 'task'")
    max_prompt_tokens: int = doc(2048, "prompts longer than this are rejected with the row named", ge=1)
    verifier_options: Mapping[str, Mapping[str, Any]] | None = doc(
        None,
        "options per verifier name for every train/eval row, e.g. {toolcall: {compat_regex: true}} for the "
        "reference's tool-call regexes (a row's own options win)",
    )


@dataclass(frozen=True)
class RolloutConfig:
    prompts_per_step: int = doc(16, "Q: questions sampled per step (each gets a fresh group id)", ge=1)
    n: int = doc(8, "G: rollouts per question", ge=1)
    temperature: float = doc(1.0, "sampling temperature (SDPO family 1.0; SCOPE 0.6)", gt=0)
    top_p: float = doc(1.0, "nucleus sampling threshold", gt=0, le=1)
    top_k: int = doc(0, "top-k sampling (0 = off)", ge=0)
    max_new_tokens: int = doc(16, "maximum response length; truncated responses keep their tokens", ge=1)
    logprob_temperature: float | None = doc(
        None,
        "temperature of the trainer's log-probs and of the teacher's (None = sampling temperature; §11 A4)",
        gt=0,
    )
    kv_cache_tokens: int = doc(
        0,
        "key/value cache budget (tokens) of rollouts and evaluation: prompts run in chunks whose rows "
        "x (prompt + max_new_tokens) fit it, with the same samples (0 = half the free device memory)",
        ge=0,
    )


@dataclass(frozen=True)
class OptimConfig:
    lr: float = doc(1e-4, "AdamW learning rate (papers: GRPO 1e-6, SDPO 1e-5, SRPO 5e-6, SCOPE 5e-5)", gt=0)
    weight_decay: float = doc(0.01, "AdamW weight decay", ge=0)
    betas: tuple[float, ...] = doc((0.9, 0.999), "AdamW betas", ge=0, lt=1)
    warmup_steps: int = doc(0, "linear warm-up steps, then constant", ge=0)
    grad_clip: float = doc(1.0, "global gradient-norm clip (0 = off)", ge=0)
    mini_batches: int = doc(
        1, "optimizer updates per step (1 = on-policy; >1 splits the groups, PPO-style)", ge=1
    )
    micro_batch_size: int = doc(0, "sequences per forward/backward (0 = the whole mini-batch)", ge=0)
    step_on_empty: bool = doc(
        False,
        "on a step without signal (all advantages 0, no informative question, no teacher scores) still step "
        "the optimizer, scheduler and EMA teacher on a zero gradient, as the reference trainers do "
        "(false: skip them, so momentum and weight decay do not move the weights)",
    )
    micro_batch_tokens: int = doc(
        0,
        "token budget per forward/backward: rows x (prompt + response width) <= it (0 = off; the smaller "
        "of this and micro_batch_size wins)",
        ge=0,
    )
    max_update_ratio: float = doc(
        10.0,
        "refuse (roll back) an update whose norm exceeds this multiple of the weights' norm (0 = only refuse "
        "updates that make a weight non-finite); an Adam update is about lr/rms(weights) times the weights",
        ge=0,
    )
    max_bad_updates: int = doc(
        3,
        "stop the run (after a checkpoint of the last good weights) after this many consecutive updates "
        "refused for non-finite loss/gradient or unhealthy weights (0 = never stop)",
        ge=0,
    )


@dataclass(frozen=True)
class TeacherConfig:
    kind: Literal["none", "local", "server", "unreliable"] = doc(
        "none",
        "external teacher for opd/scope: a local model, an HTTP server, none, or 'unreliable' (a local model "
        "confidently wrong on teacher.wrong_fraction of the questions; teachers.unreliable)",
    )
    path: str = doc("", "local teacher: model directory ('tiny' = the warm-started strong teacher)")
    url: str = doc("", "server teacher: base URL of an OpenAI-compatible server (opdkit serve-teacher, vLLM)")
    api_key: str = doc("", "server teacher: bearer key ('' = none); written to config.yaml as <redacted>")
    api_key_env: str = doc(
        "", "server teacher: environment variable holding the bearer key (used when api_key is '')"
    )
    model: str = doc("", "server teacher: model name sent in requests ('' = the server's first model)")
    timeout_s: float = doc(60.0, "server teacher: per-request timeout", gt=0)
    max_retries: int = doc(4, "server teacher: retries per request (exponential backoff with jitter)", ge=0)
    concurrency: int = doc(4, "server teacher: requests in flight", ge=1)
    temperature: float | None = doc(
        None,
        "teacher log-prob temperature (None = the student's log-prob temperature, §11 A4; 1.0 for vLLM)",
        gt=0,
    )
    rows_per_request: int = doc(8, "server teacher: rows batched into one request", ge=1)
    wrong_fraction: float = doc(0.5, "unreliable teacher: share of the questions it is wrong on", ge=0, le=1)
    max_failed_steps: int = doc(
        3, "stop the run (after a checkpoint) after this many consecutive steps with failed rows", ge=1
    )


@dataclass(frozen=True)
class EvalConfig:
    every: int = doc(0, "evaluate every N steps (0 = only at start and end)", ge=0)
    k: int = doc(4, "samples per problem (mean@k, pass@k, maj@k)", ge=1)
    temperature: float = doc(0.6, "evaluation sampling temperature (0 = greedy)", ge=0)
    top_p: float = doc(0.95, "evaluation nucleus threshold", gt=0, le=1)
    max_new_tokens: int = doc(0, "evaluation response limit (0 = rollout.max_new_tokens)", ge=0)
    num_problems: int = doc(0, "evaluate on the first N problems (0 = all)", ge=0)
    at_start: bool = doc(True, "evaluate before the first step")
    batch_size: int = doc(
        16,
        "prompts per evaluation batch (each batch has its own seed; rollout.kv_cache_tokens chunks it)",
        ge=1,
    )


def _method_config_type(raw: Mapping) -> type:
    name = raw.get("name", "grpo")
    if not isinstance(name, str):
        raise ConfigError(f"method.name must be a string, got {name!r}")
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; valid methods: {', '.join(METHODS.names())}")
    return METHODS.get(name).config_type


@dataclass(frozen=True)
class TrainConfig:
    seed: int = doc(0, "seed of sampling, data order and initialisation", ge=0, lt=2**63)
    steps: int = doc(50, "training steps", ge=1)
    threads: int = doc(1, "torch intra-op threads on CPU (1 is fastest on a busy 2-core machine)", ge=1)
    log_every: int = doc(1, "write metrics every N steps", ge=1)
    checkpoint_every: int = doc(0, "save a checkpoint every N steps (0 = only at the end)", ge=0)
    keep_checkpoints: int = doc(2, "how many recent checkpoints to keep", ge=1)
    model: ModelConfig = section(ModelConfig, "student model")
    data: DataConfig = section(DataConfig, "training and evaluation data")
    rollout: RolloutConfig = section(RolloutConfig, "sampling of the student's rollouts")
    optim: OptimConfig = section(OptimConfig, "optimizer")
    method: MethodConfig = section(
        lambda: METHODS.get("grpo").config_type(),
        "the method and its parameters",
        resolver=_method_config_type,
    )
    teacher: TeacherConfig = section(TeacherConfig, "external teacher (opd, scope)")
    self_teacher: SelfTeacherOptions = section(SelfTeacherOptions, "self-teacher (SDPO family, SRPO)")
    eval: EvalConfig = section(EvalConfig, "periodic evaluation on held-out problems")
    warmstart: WarmStartConfig = section(WarmStartConfig, "warm start of model.student=tiny")
    verl: Mapping[str, Any] | None = doc(
        None, "cluster settings read by 'opdkit verl-config' (see docs/verl.md); ignored by 'opdkit train'"
    )

    def __post_init__(self) -> None:
        """Combinations of keys (each key's own range is checked by ``from_dict``)."""
        needed = METHODS.get(self.method.name).min_group_size
        if self.rollout.n < needed:
            raise ConfigError(
                f"rollout.n={self.rollout.n}: method {self.method.name} compares each rollout with its "
                f"group (advantages, pass rates or siblings), so it needs rollout.n >= {needed}"
            )


def config_from_dict(raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> TrainConfig:
    """Build and validate a ``TrainConfig`` from a nested dict plus dotted overrides."""
    return from_dict(TrainConfig, _switch_method(raw, apply_overrides(dict(raw), overrides), overrides))


def _switch_method(
    raw: Mapping[str, Any], merged: dict[str, Any], overrides: Sequence[str]
) -> dict[str, Any]:
    """``method.name=X`` on the command line over a YAML of another method: the YAML's method keys that X
    does not have are dropped, with a note naming them (a key given on the command line is still checked)."""
    old_section = raw.get("method") if isinstance(raw.get("method"), Mapping) else {}
    section = merged.get("method")
    if not isinstance(section, dict):
        return merged
    new = section.get("name", "grpo")
    if new == old_section.get("name", "grpo") or not isinstance(new, str) or new not in METHODS:
        return merged
    config_type = METHODS.get(new).config_type
    valid = {f.name for f in dataclasses.fields(config_type)}
    given = {o.split("=", 1)[0].strip().removeprefix("method.") for o in overrides if o.startswith("method.")}

    def fits(key: str) -> bool:  # a shared key whose value the new method accepts (agg: 'code' is SCOPE's)
        try:
            from_dict(config_type, {"name": new, key: section[key]}, "method")
        except ConfigError:
            return False
        return True

    dropped = sorted(
        k for k in old_section if k not in given and k != "name" and (k not in valid or not fits(k))
    )
    if dropped:
        merged = {**merged, "method": {k: v for k, v in section.items() if k not in dropped}}
        note = f"note: method.name={new}: dropped method.{', method.'.join(dropped)} from the config"
        print(
            f"{note} (parameters of {old_section.get('name', 'grpo')} that {new} lacks or refuses)",
            file=sys.stderr,
        )
    return merged


PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"


def resolve_preset(config: str) -> str:
    """A YAML path as given, or a packaged preset's path from its name (``tiny/scope``, ``paper/sc_sdpo``)."""
    if Path(config).is_file():
        return config
    packaged = PRESETS_DIR / f"{config.removesuffix('.yaml')}.yaml"
    if packaged.is_file():
        return str(packaged)
    names = preset_names()
    short = [n for n in names if n.count("/") == 1]  # the table rows (paper/<task>/<method>) are many
    raise ConfigError(
        f"config {config!r} is neither a file nor a packaged preset; presets: {', '.join(short)} and "
        f"{len(names) - len(short)} paper table rows ('opdkit presets' lists every one)"
    )


def preset_names() -> list[str]:
    """Every packaged preset's name (``tiny/scope``, ``paper/chemistry/sc_sdpo``, ...), sorted."""
    return sorted(
        p.relative_to(PRESETS_DIR).with_suffix("").as_posix() for p in PRESETS_DIR.rglob("[!_]*.yaml")
    )


def load_config(path: str | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a YAML file or packaged preset (``resolve_preset``; defaults if ``path`` is None) + overrides."""
    path = resolve_preset(path) if path else None
    raw = load_yaml(path) if path else {}
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None
