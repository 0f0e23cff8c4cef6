"""Dry-run launch: the overrides ``opdkit verl-config`` emits compose with verl 0.9.1's ``ppo_trainer`` Hydra
config, pass verl's own ``validate_config`` (what ``main_ppo`` runs before starting Ray), instantiate the
dataclasses the workers build, and name estimators, losses and trainers that verl's registries resolve."""

from __future__ import annotations

import pytest

pytest.importorskip("verl")

from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.trainer.ppo.v1 import get_trainer_cls
from verl.utils.config import omega_conf_to_dataclass, validate_config
from verl_testkit import composed_config

from opdkit.integrations.verl.config_gen import METHODS, verl_command
from opdkit.integrations.verl.params import parse_params

pytestmark = pytest.mark.usefixtures("verl_plugin")

RUN = {
    "model": {"path": "/models/student", "teacher_path": "/models/teacher"},
    "data": {"train_files": "~/data/train.parquet", "val_files": "/data/val.parquet"},  # ~ needs quoting
    "rollout": {"n": 8},
    "train": {"batch_size": 32, "micro_batch_size_per_gpu": 4},
    "verl": {"nnodes": 1, "n_gpus_per_node": 8},
}


def _method_variants() -> list[dict]:
    variants = [{"name": name} for name in METHODS.names()]
    variants += [
        {"name": "sc_opd", "divergence": "k3", "hard_filter": True},
        {"name": "sc_opd", "divergence": "forward_kl_topk"},
        {"name": "scope", "agg": "joint", "sign_preset": "released_scripts"},
    ]
    return variants


@pytest.mark.parametrize("method", _method_variants(), ids=lambda m: "-".join(str(v) for v in m.values()))
def test_emitted_overrides_compose_and_validate(method: dict) -> None:
    command = verl_command({**RUN, "method": method})
    assert command.argv[:3] == ["python", "-m", "verl.trainer.main_ppo"]
    cfg = composed_config(tuple(command.overrides))
    assert cfg.data.train_files == "~/data/train.parquet"
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    assert not need_reference_policy(cfg)  # no KL anywhere: no reference model is loaded
    assert get_adv_estimator_fn(cfg.algorithm.adv_estimator) is not None
    assert get_trainer_cls(cfg.trainer.v1.trainer_mode) is not None
    params = parse_params(cfg.algorithm.get("opdkit"))
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert actor.ppo_mini_batch_size == 32
    if cfg.distillation.enabled:
        distill = omega_conf_to_dataclass(cfg.distillation)
        assert distill.distillation_loss.loss_mode.startswith(("opdkit_", "k1"))
        (teacher,) = distill.teacher_models.values()  # one teacher, keyed "default" by verl
        assert (teacher.model_path, teacher.num_replicas) == ("/models/teacher", 1)  # 1 GPU, TP 1
    if method["name"] in ("scope", "sc_opd"):
        assert cfg.trainer.v1.trainer_mode == "opdkit_sync"
        assert params.weighting != "none"
