"""``opdkit verl-config CONFIG.yaml``: the verl launch command (Hydra overrides) for an opdkit run config.

Users never edit verl YAML: the generator maps the sections below to overrides of verl 0.9.1's
``ppo_trainer`` config and prints ``python -m verl.trainer.main_ppo KEY=VALUE ...``. It only emits text (it
never imports verl), so it runs in opdkit's own environment. Input is the loaded YAML as a plain nested
dict; every key is checked and an unknown or missing one raises ``ConfigError`` naming it and the choices.

    method:  {name: scope, tau: 1.0, ...}      one of METHODS, with that method's parameters (METHOD_PARAMS)
    model:   {path: STUDENT, teacher_path: TEACHER}         teacher for opd, scope, sc_opd
    data:    {train_files: PARQUET, val_files: PARQUET, max_prompt_length: 2048, max_response_length: 8192}
    rollout: {n: 8, temperature: 1.0, engine: vllm, tensor_parallel: 1, gpu_memory_utilization: 0.5}
    train:   {batch_size: 32, mini_batch_size: 32, micro_batch_size_per_gpu: 4, lr: 1e-6, weight_decay: 0.01,
              grad_clip: 1.0, epochs: 1, total_steps: null}       batch sizes count prompts, as verl's do
    verl:    {nnodes: 1, n_gpus_per_node: 8, teacher_nnodes: 1, teacher_n_gpus_per_node: 1,
              teacher_tensor_parallel: 1, project_name: opdkit, experiment_name: null,
              logger: [console], extra: ["trainer.save_freq=50"]}          cluster layout and pass-through

Other top-level sections of an opdkit config (``IGNORED_SECTIONS``: evaluation, run directory, ...) have no
verl counterpart and are skipped. Methods and what they run on verl (docs/verl.md has the details):

    grpo, grpo_no_std   algorithm.adv_estimator=opdkit_grpo (std normalisation on / off)
    sc_grpo             opdkit_sc_grpo: pass-rate weights on the GRPO advantage
    opd                 verl's distillation with loss k1 as a policy-gradient reward (ALGORITHMS.md §3.1)
    scope               trainer opdkit_sync (weighting=scope) + distillation loss opdkit_scope (§5)
    sc_opd              trainer opdkit_sync (weighting=pass_rate or hard_filter) + opdkit_sc_* loss (§6.2)

SDPO-family methods need a teacher that sees privileged context (a reprompted prompt); verl 0.9.1's teacher
pool scores the student's own prompt only, so those names raise ``ConfigError`` pointing at ``sc_opd``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opdkit.core.registry import Registry
from opdkit.core.weights import SCOPE_SIGN_PRESETS
from opdkit.integrations.verl.params import CONFIG_NODE

IGNORED_SECTIONS = frozenset({"eval", "evaluation", "run", "run_dir", "output", "logging", "seed", "device"})
UNSUPPORTED = frozenset({"sdpo", "sc_sdpo", "sdpo_paced", "sdpo_hard_filter", "srpo"})

SECTION_KEYS: dict[str, dict[str, Any]] = {
    "model": {"path": None, "teacher_path": None},
    "data": {"train_files": None, "val_files": None, "max_prompt_length": 2048, "max_response_length": 2048},
    "rollout": {
        "n": 8, "temperature": None, "engine": "vllm", "tensor_parallel": 1, "gpu_memory_utilization": 0.5,
    },
    "train": {
        "batch_size": 32, "mini_batch_size": None, "micro_batch_size_per_gpu": 4, "lr": 1e-6,
        "weight_decay": 0.01, "grad_clip": 1.0, "epochs": 1, "total_steps": None,
    },
    "verl": {
        "nnodes": 1, "n_gpus_per_node": 8, "teacher_nnodes": 1, "teacher_n_gpus_per_node": 1,
        "teacher_tensor_parallel": 1, "project_name": "opdkit", "experiment_name": None,
        "logger": ["console"], "extra": [],
    },
}  # fmt: skip
ENGINES = ("vllm", "sglang")


class ConfigError(ValueError):
    """An opdkit config that cannot be mapped to verl; the message names the key and the valid choices."""


@dataclass(frozen=True)
class VerlCommand:
    """The launch command: ``argv`` (python -m verl.trainer.main_ppo ...) and the overrides alone."""

    argv: list[str]
    overrides: list[str]

    def render(self) -> str:
        """One shell command: the launcher on the first line, then one override per line."""
        launcher = " ".join(self.argv[: len(self.argv) - len(self.overrides)])
        return " \\\n    ".join([launcher, *(shlex.quote(item) for item in self.overrides)])


@dataclass(frozen=True)
class MethodSpec:
    """A method: its parameters with defaults, and the overrides it needs (given the merged parameters)."""

    params: dict[str, Any]
    build: Callable[[dict[str, Any]], dict[str, Any]]
    needs_teacher: bool = False
    rollout_temperature: float = 1.0


METHODS: Registry[MethodSpec] = Registry("verl method")


def _clip(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "actor_rollout_ref.actor.clip_ratio_low": p["clip_low"],
        "actor_rollout_ref.actor.clip_ratio_high": p["clip_high"],
        "actor_rollout_ref.actor.loss_agg_mode": p["loss_agg_mode"],
    }


def _grpo(normalize_std: bool) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def build(p: dict[str, Any]) -> dict[str, Any]:
        return {
            "algorithm.adv_estimator": "opdkit_grpo",
            "algorithm.norm_adv_by_std_in_grpo": normalize_std,
            **_clip(p),
        }

    return build


_GRPO_PARAMS = {"clip_low": 0.2, "clip_high": 0.28, "loss_agg_mode": "token-mean"}  # §10.1
METHODS.add("grpo", MethodSpec(params=dict(_GRPO_PARAMS), build=_grpo(True)))
METHODS.add("grpo_no_std", MethodSpec(params=dict(_GRPO_PARAMS), build=_grpo(False)))


def _opdkit_node(p: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    """``+algorithm.opdkit.KEY`` overrides (the node is not in verl's config, hence the ``+``)."""
    return {f"+{CONFIG_NODE}.{node_key}": p[param] for node_key, param in keys.items()}


def _sc_grpo(p: dict[str, Any]) -> dict[str, Any]:
    node = _opdkit_node(p, {"sc_alpha": "alpha", "success_threshold": "success_threshold"})
    return {
        "algorithm.adv_estimator": "opdkit_sc_grpo",
        "algorithm.norm_adv_by_std_in_grpo": True,
        **node,
        **_clip(p),
    }


METHODS.add(
    "sc_grpo", MethodSpec(params={**_GRPO_PARAMS, "alpha": 0.5, "success_threshold": 0.5}, build=_sc_grpo)
)


def _distillation(loss_mode: str, *, policy_gradient: bool, p: dict[str, Any]) -> dict[str, Any]:
    prefix = "distillation.distillation_loss."
    return {
        "distillation.enabled": True,
        f"{prefix}loss_mode": loss_mode,
        f"{prefix}use_policy_gradient": policy_gradient,
        f"{prefix}use_task_rewards": False,
        f"{prefix}loss_max_clamp": None,
        f"{prefix}clip_ratio_low": p["clip_low"],
        f"{prefix}clip_ratio_high": p["clip_high"],
        "actor_rollout_ref.actor.loss_agg_mode": p["loss_agg_mode"],
        "algorithm.adv_estimator": "grpo",  # computed by verl but unused: use_task_rewards=false
    }


def _opd(p: dict[str, Any]) -> dict[str, Any]:
    return _distillation("k1", policy_gradient=True, p=p)  # A = −(logp − logp_T), PPO clip (§3.1)


_DISTILL_PARAMS = {"clip_low": 0.2, "clip_high": 0.2, "loss_agg_mode": "token-mean"}  # SCOPE's §10.4
METHODS.add(
    "opd", MethodSpec(params=dict(_DISTILL_PARAMS), build=_opd, needs_teacher=True, rollout_temperature=0.6)
)


def _scope(p: dict[str, Any]) -> dict[str, Any]:
    if p["sign_preset"] is not None:
        if p["sign_preset"] not in SCOPE_SIGN_PRESETS:
            raise ConfigError(
                f"method.sign_preset: unknown {p['sign_preset']!r}; valid: {', '.join(SCOPE_SIGN_PRESETS)}"
            )
        p = {**p, "student_exponent": SCOPE_SIGN_PRESETS[p["sign_preset"]][0]}
        p["teacher_exponent"] = SCOPE_SIGN_PRESETS[p["sign_preset"]][1]
    if p["loss_agg_mode"] != "token-mean":
        raise ConfigError("method.loss_agg_mode: scope on verl supports token-mean only (ALGORITHMS.md §5.5)")
    node = _opdkit_node(p, {
        "scope_tau": "tau", "scope_student_exponent": "student_exponent",
        "scope_teacher_exponent": "teacher_exponent", "scope_normalization": "normalization",
        "scope_agg": "agg", "success_threshold": "success_threshold",
    })  # fmt: skip
    node[f"+{CONFIG_NODE}.weighting"] = "scope"
    return {
        **_distillation("opdkit_scope", policy_gradient=False, p=p),
        **node,
        "trainer.v1.trainer_mode": "opdkit_sync",
    }


_SCOPE_PARAMS = {
    **_DISTILL_PARAMS, "tau": 1.0, "student_exponent": 1.0, "teacher_exponent": -1.0, "sign_preset": None,
    "normalization": "mean1", "agg": "code", "success_threshold": 0.5,
}  # fmt: skip
METHODS.add(
    "scope", MethodSpec(params=_SCOPE_PARAMS, build=_scope, needs_teacher=True, rollout_temperature=0.6)
)

#: sc_opd divergence -> (verl loss mode, as a policy-gradient reward?) — k1 as a reward is OPD (§3.1);
#: k3 and the top-k forward KL are supervised losses (verl's recommendation for them).
SC_DIVERGENCES = {
    "k1": ("opdkit_sc_k1", True),
    "k3": ("opdkit_sc_k3", False),
    "forward_kl_topk": ("opdkit_sc_forward_kl_topk", False),
}


def _sc_opd(p: dict[str, Any]) -> dict[str, Any]:
    if p["divergence"] not in SC_DIVERGENCES:
        raise ConfigError(
            f"method.divergence: unknown {p['divergence']!r}; valid: {', '.join(SC_DIVERGENCES)}"
        )
    loss_mode, policy_gradient = SC_DIVERGENCES[p["divergence"]]
    weighting = "hard_filter" if p["hard_filter"] else "pass_rate"
    node = _opdkit_node(p, {"sc_alpha": "alpha", "success_threshold": "success_threshold"})
    node[f"+{CONFIG_NODE}.weighting"] = weighting
    out = {**_distillation(loss_mode, policy_gradient=policy_gradient, p=p), **node}
    if p["divergence"] == "forward_kl_topk":
        out["distillation.distillation_loss.topk"] = p["topk"]
    return {**out, "trainer.v1.trainer_mode": "opdkit_sync"}


_SC_OPD_PARAMS = {
    **_DISTILL_PARAMS, "alpha": 0.5, "hard_filter": False, "divergence": "k1", "topk": 100,
    "success_threshold": 0.5,
}  # fmt: skip
METHODS.add("sc_opd", MethodSpec(params=_SC_OPD_PARAMS, build=_sc_opd, needs_teacher=True))


# ------------------------------------------------------------------------------------- validation


def _section(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A section merged over its defaults; unknown keys raise naming ``section.key`` and the valid keys."""
    given = cfg.get(name) or {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"{name}: expected a mapping of keys, got {type(given).__name__}")
    valid = SECTION_KEYS[name]
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key {name}.{unknown[0]}; valid keys of {name}: {', '.join(valid)}")
    return {**valid, **given}


def _method(cfg: Mapping[str, Any]) -> tuple[str, MethodSpec, dict[str, Any]]:
    given = cfg.get("method")
    if isinstance(given, str):
        given = {"name": given}
    if not isinstance(given, Mapping) or "name" not in given:
        raise ConfigError(f"method.name is required; valid: {', '.join(METHODS.names())}")
    name = str(given["name"])
    if name in UNSUPPORTED:
        raise ConfigError(
            f"method.name {name!r} needs a privileged-context (reprompted) self-teacher, which verl 0.9.1 "
            "does not have (its teacher pool scores the student's own prompt); use sc_opd for SC-weighted "
            "distillation from an external teacher, or run it with `opdkit train` (see docs/verl.md)"
        )
    if name not in METHODS:
        raise ConfigError(f"method.name: unknown {name!r}; valid: {', '.join(METHODS.names())}")
    spec = METHODS.get(name)
    params = {k: v for k, v in given.items() if k != "name"}
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise ConfigError(f"unknown key method.{unknown[0]} for {name}; valid: {', '.join(spec.params)}")
    return name, spec, {**spec.params, **params}


def _require(value: Any, key: str, why: str = "") -> Any:
    if value in (None, "", []):
        raise ConfigError(f"{key} is required{why}")
    return value


def _check_known_sections(cfg: Mapping[str, Any]) -> None:
    known = {"method", *SECTION_KEYS}
    unknown = sorted(set(cfg) - known - IGNORED_SECTIONS)
    if unknown:
        raise ConfigError(
            f"unknown section {unknown[0]!r}; valid: {', '.join(sorted(known))} "
            f"(skipped: {', '.join(sorted(IGNORED_SECTIONS))})"
        )


# ---------------------------------------------------------------------------------------- mapping


def _files(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def _common(cfg: Mapping[str, Any], spec: MethodSpec, name: str) -> dict[str, Any]:
    """Overrides every method shares: model, data, rollout, batch sizes, optimiser, cluster, logging."""
    model, data, rollout = _section(cfg, "model"), _section(cfg, "data"), _section(cfg, "rollout")
    train, cluster = _section(cfg, "train"), _section(cfg, "verl")
    if rollout["engine"] not in ENGINES:
        raise ConfigError(f"rollout.engine: unknown {rollout['engine']!r}; valid: {', '.join(ENGINES)}")
    train_files = _files(_require(data["train_files"], "data.train_files"))
    mini = train["mini_batch_size"] or train["batch_size"]  # one update per step unless told otherwise
    micro = train["micro_batch_size_per_gpu"]
    out = {
        "actor_rollout_ref.model.path": _require(model["path"], "model.path"),
        "data.train_files": train_files,
        "data.val_files": _files(data["val_files"]) or train_files,
        "data.train_batch_size": train["batch_size"],
        "data.max_prompt_length": data["max_prompt_length"],
        "data.max_response_length": data["max_response_length"],
        "actor_rollout_ref.rollout.name": rollout["engine"],
        "actor_rollout_ref.rollout.n": rollout["n"],
        "actor_rollout_ref.rollout.temperature": rollout["temperature"] or spec.rollout_temperature,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": rollout["tensor_parallel"],
        "actor_rollout_ref.rollout.gpu_memory_utilization": rollout["gpu_memory_utilization"],
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": micro,
        "actor_rollout_ref.actor.ppo_mini_batch_size": mini,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": micro,
        "actor_rollout_ref.actor.optim.lr": train["lr"],
        "actor_rollout_ref.actor.optim.weight_decay": train["weight_decay"],
        "actor_rollout_ref.actor.grad_clip": train["grad_clip"],
        "actor_rollout_ref.actor.use_kl_loss": False,  # every seed experiment: KL coefficient 0 (§2.4)
        "actor_rollout_ref.actor.entropy_coeff": 0,
        "algorithm.use_kl_in_reward": False,
        "trainer.total_epochs": train["epochs"],
        "trainer.nnodes": cluster["nnodes"],
        "trainer.n_gpus_per_node": cluster["n_gpus_per_node"],
        "trainer.project_name": cluster["project_name"],
        "trainer.experiment_name": cluster["experiment_name"] or f"opdkit-{name}",
        "trainer.logger": list(cluster["logger"]),
        "trainer.v1.trainer_mode": "sync",
    }
    if train["total_steps"] is not None:
        out["trainer.total_training_steps"] = train["total_steps"]
    if data["val_files"] is None:  # no validation set: do not validate on the training files
        out.update({"trainer.val_before_train": False, "trainer.test_freq": -1})
    if spec.needs_teacher:
        out.update(_teacher(model, cluster, name))
    return out


def _teacher(model: dict[str, Any], cluster: dict[str, Any], name: str) -> dict[str, Any]:
    teacher = "distillation.teacher_models.teacher_model."
    return {
        f"{teacher}model_path": _require(model["teacher_path"], "model.teacher_path", f" for method {name}"),
        f"{teacher}inference.tensor_model_parallel_size": cluster["teacher_tensor_parallel"],
        "distillation.nnodes": cluster["teacher_nnodes"],
        "distillation.n_gpus_per_node": cluster["teacher_n_gpus_per_node"],
    }


#: Strings Hydra's override grammar takes unquoted (paths, model ids); anything else (``~``, spaces, commas,
#: brackets, quotes) is single-quoted so Hydra reads it as one string.
_HYDRA_PLAIN = re.compile(r"[A-Za-z0-9_./:@+\-]+")


def format_value(value: Any) -> str:
    """A Python value in Hydra override syntax: true/false, null, [a,b], numbers, quoted-if-needed strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, str) and not _HYDRA_PLAIN.fullmatch(value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def verl_overrides(cfg: Mapping[str, Any]) -> list[str]:
    """The Hydra overrides (``key=value``) that run ``cfg`` on verl 0.9.1's ``ppo_trainer`` config."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"the config must be a mapping of sections, got {type(cfg).__name__}")
    _check_known_sections(cfg)
    name, spec, params = _method(cfg)
    merged = {**_common(cfg, spec, name), **spec.build(params)}
    extra = _section(cfg, "verl")["extra"]
    bad = [item for item in extra if not isinstance(item, str) or "=" not in item]
    if bad:
        raise ConfigError(f"verl.extra: each entry must be a 'key=value' string, got {bad[0]!r}")
    return [f"{key}={format_value(value)}" for key, value in merged.items()] + list(extra)


def verl_command(cfg: Mapping[str, Any]) -> VerlCommand:
    """``python -m verl.trainer.main_ppo`` with ``verl_overrides(cfg)``."""
    overrides = verl_overrides(cfg)
    return VerlCommand(argv=["python", "-m", "verl.trainer.main_ppo", *overrides], overrides=overrides)
