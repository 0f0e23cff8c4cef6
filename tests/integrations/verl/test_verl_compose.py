"""Dry-run launch: the overrides ``opdkit verl-config`` emits compose with verl 0.9.1's ``ppo_trainer`` Hydra
config, pass verl's own ``validate_config`` (what ``main_ppo`` runs before starting Ray), instantiate the
dataclasses the workers build, and name estimators, losses and trainers that verl's registries resolve."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("verl")

from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.trainer.ppo.v1 import get_trainer_cls
from verl.utils.config import omega_conf_to_dataclass, validate_config
from verl_testkit import composed_config, verl_plugin  # noqa: F401  (a fixture)

from opdkit.integrations.verl.config_gen import verl_command
from opdkit.integrations.verl.params import parse_params

pytestmark = pytest.mark.usefixtures("verl_plugin")

RUN = {
    "model": {"student": "/models/student"},
    "data": {"train": "~/data/train.parquet", "eval": "/data/val.parquet"},  # ~ needs quoting for Hydra
    "teacher": {"kind": "local", "path": "/models/teacher"},
    "rollout": {"prompts_per_step": 32, "n": 8},
    "optim": {"micro_batch_size": 4},
    "verl": {"nnodes": 1, "n_gpus_per_node": 8},
}

VARIANTS = [
    ({"name": "grpo"}, ()),
    ({"name": "grpo_no_std"}, ("optim.mini_batches=4",)),
    ({"name": "grpo"}, ("verl.sc_weighting=pass_rate",)),
    ({"name": "opd"}, ()),
    ({"name": "opd"}, ("verl.sc_weighting=pass_rate",)),
    ({"name": "opd"}, ("verl.sc_weighting=hard_filter", "verl.sc_divergence=k3")),
    ({"name": "opd"}, ("verl.sc_weighting=pass_rate", "verl.sc_divergence=forward_kl_topk")),
    ({"name": "scope"}, ()),
    ({"name": "scope", "agg": "joint", "sign_preset": "released_scripts", "use_seq_weights": False}, ()),
    ({"name": "grpo"}, ("optim.micro_batch_size=0",)),
    ({"name": "sdpo"}, ()),
    ({"name": "sc_sdpo", "sc_alpha": 1.0}, ("self_teacher.weights=base",)),
    ({"name": "sdpo_hard_filter"}, ("self_teacher.weights=live",)),
    ({"name": "sdpo_paced"}, ()),
    ({"name": "srpo"}, ("self_teacher.include_environment_feedback=true",)),
]


@pytest.mark.parametrize(
    ("method", "dotted"), VARIANTS, ids=lambda v: "-".join(map(str, v.values() if isinstance(v, dict) else v))
)
def test_emitted_overrides_compose_and_validate(method: dict, dotted: tuple) -> None:
    command = verl_command({**RUN, "method": method}, dotted)
    assert command.argv[:3] == ["python", "-m", "verl.trainer.main_ppo"]
    cfg = composed_config(tuple(command.overrides))
    assert cfg.data.train_files == "~/data/train.parquet"
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    # no KL anywhere: no reference model is loaded, except as the SDPO family's self-teacher
    assert need_reference_policy(cfg) == (cfg.trainer.v1.trainer_mode == "opdkit_sdpo")
    assert get_adv_estimator_fn(cfg.algorithm.adv_estimator) is not None
    assert get_trainer_cls(cfg.trainer.v1.trainer_mode) is not None
    params = parse_params(cfg.algorithm.get("opdkit"))
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert actor.ppo_mini_batch_size * (4 if "optim.mini_batches=4" in dotted else 1) == 32
    if cfg.distillation.enabled:
        distill = omega_conf_to_dataclass(cfg.distillation)
        (teacher,) = distill.teacher_models.values()  # one teacher, keyed "default" by verl
        assert (teacher.model_path, teacher.num_replicas) == ("/models/teacher", 1)  # 1 GPU, TP 1
    if cfg.trainer.v1.trainer_mode == "opdkit_sync":
        assert params.weighting != "none"
    if cfg.trainer.v1.trainer_mode == "opdkit_sdpo":
        _check_sdpo(cfg, method["name"])


def _check_sdpo(cfg, name: str) -> None:
    from opdkit.integrations.verl.sdpo_params import parse_sdpo_params, unsupported

    assert unsupported(cfg) == []  # the trainer accepts it
    assert parse_sdpo_params(cfg.algorithm.opdkit_sdpo).method == name
    assert not cfg.distillation.enabled and cfg.data.return_raw_chat


PRESETS = sorted(
    (Path(__file__).resolve().parents[3] / "src" / "opdkit" / "configs" / "paper").rglob("*.yaml")
)


@pytest.mark.parametrize(
    "preset",
    PRESETS,
    ids=lambda p: str(p.relative_to(p.parents[1] if p.parent.name != "paper" else p.parent)),
)
def test_every_paper_preset_composes_and_validates(preset: Path) -> None:
    import yaml

    raw = yaml.safe_load(preset.read_text())
    dotted = ("data.train=/d/train.parquet", "data.eval=/d/val.parquet", "verl.teacher_path=/models/teacher")
    cfg = composed_config(tuple(verl_command(raw, dotted).overrides))
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    assert get_trainer_cls(cfg.trainer.v1.trainer_mode) is not None
    omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    if cfg.trainer.v1.trainer_mode == "opdkit_sdpo":
        _check_sdpo(cfg, raw["method"]["name"])
