"""The plugin is discovered inside a Ray worker process: a fresh worker that only runs ``import verl`` ends up
with opdkit's estimators, losses and trainer registered (verl loads the ``verl.plugins`` entry point)."""

from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("verl")
ray = pytest.importorskip("ray")


def _worker_registries() -> dict:
    before = "opdkit.integrations.verl.plugin" in sys.modules
    import verl  # noqa: F401  (entry-point discovery happens here)
    from verl.trainer.distillation.losses import DISTILLATION_LOSS_REGISTRY
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

    return {
        "pid": os.getpid(),
        "loaded_before_import": before,
        "loaded_after_import": "opdkit.integrations.verl.plugin" in sys.modules,
        "adv_estimator": sorted(k for k in ADV_ESTIMATOR_REGISTRY if k.startswith("opdkit")),
        "distillation_loss": sorted(k for k in DISTILLATION_LOSS_REGISTRY if k.startswith("opdkit")),
        "trainer": sorted(k for k in TRAINER_REGISTRY if k.startswith("opdkit")),
    }


@pytest.mark.slow
def test_plugin_registers_inside_a_ray_worker() -> None:
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "VERL_USE_EXTERNAL_PLUGINS": "auto"}},
        log_to_driver=False,
    )
    # Ship the task by value: the worker cannot import this test module (and must not: it imports verl first).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        found = ray.get(ray.remote(_worker_registries).remote(), timeout=300)
    finally:
        ray.shutdown()
    assert found["pid"] != os.getpid()
    assert not found["loaded_before_import"]
    assert found["loaded_after_import"]
    assert found["adv_estimator"] == ["opdkit_grpo", "opdkit_sc_grpo"]
    assert found["distillation_loss"] == [
        "opdkit_sc_forward_kl_topk",
        "opdkit_sc_k1",
        "opdkit_sc_k2",
        "opdkit_sc_k3",
        "opdkit_scope",
    ]
    assert found["trainer"] == ["opdkit_sync"]
