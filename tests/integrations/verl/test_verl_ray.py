"""Tests with a local Ray: the plugin is discovered inside a Ray worker process (a fresh worker that only runs
``import verl`` ends up with opdkit's estimators, losses and trainer registered), and the ``opdkit_sync``
trainer's advantage step reads and writes the step batch through verl's real TransferQueue."""

from __future__ import annotations

import os
import sys

import pytest
import torch

pytest.importorskip("verl")

import ray  # installed with verl
from verl_testkit import composed_config, packed_batch, random_step_values

from opdkit.core.advantages import grpo_advantages
from opdkit.integrations.verl import params as vp
from opdkit.integrations.verl.fields import DriverBatch, group_ids_from_uids, scope_step_weights


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


@pytest.fixture(scope="module")
def local_ray():
    # Logical CPUs are scheduling slots, not threads: TransferQueue's controller and its storage unit each
    # reserve one, the plugin task a third.
    ray.init(
        num_cpus=3,
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "VERL_USE_EXTERNAL_PLUGINS": "auto"}},
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.mark.slow
def test_plugin_registers_inside_a_ray_worker(local_ray) -> None:
    # Ship the task by value: the worker cannot import this test module (and must not: it imports verl first).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    found = ray.get(ray.remote(_worker_registries).remote(), timeout=300)
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
    assert found["trainer"] == ["opdkit_sdpo", "opdkit_sync"]


def _put_step(tq, step, uids: list[str], rewards_N: torch.Tensor) -> list[str]:
    """Rows as verl's agent loop stores them: nested per-sample tensors, uid strings, reward on the last
    token."""
    from verl.utils import tensordict_utils as tu

    last_N = torch.tensor(step.response_lens) - 1
    width = max(step.response_lens)
    rm_scores = torch.zeros(len(uids), width).scatter(1, last_N.unsqueeze(-1), rewards_N.unsqueeze(-1))
    batch = packed_batch(step, per_token_fields={"rm_scores": rm_scores})
    fields = ["prompts", "responses", "response_mask", "old_log_probs", "teacher_logprobs", "rm_scores"]
    data = batch.data.select(*fields)
    tu.assign_non_tensor_stack(data, "uid", uids)
    keys = [f"{uid}_{i}_0" for i, uid in enumerate(uids)]
    tq.kv_batch_put(keys=keys, partition_id="train", fields=data, tags=[{"status": "success"} for _ in keys])
    return keys


@pytest.mark.slow
def test_opdkit_sync_trainer_writes_scope_weights_through_transfer_queue(local_ray) -> None:
    import transfer_queue as tq
    from omegaconf import OmegaConf
    from transfer_queue import KVBatchMeta

    from opdkit.integrations.verl.trainer import OpdkitSyncTrainer

    uids = ["a"] * 4 + ["b"] * 4
    rewards_N = torch.tensor([1.0, 0, 1, 0, 0, 0, 0, 1])
    step = random_step_values([3, 2, 4, 2, 5, 3, 2, 4], [4, 6, 2, 5, 3, 6, 1, 4], seed=9)
    overrides = (
        "algorithm.adv_estimator=grpo",
        "actor_rollout_ref.rollout.n=4",
        "+algorithm.opdkit.weighting=scope",
    )
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    try:
        keys = _put_step(tq, step, uids, rewards_N)
        trainer = OpdkitSyncTrainer.__new__(OpdkitSyncTrainer)  # only the advantage step is exercised
        trainer.config = composed_config(overrides)
        metrics: dict = {}
        trainer._compute_advantage(
            KVBatchMeta(keys=keys, tags=[{}] * len(keys), partition_id="train"), metrics
        )
        names = [vp.FIELD_W_STUDENT, vp.FIELD_W_TEACHER, vp.FIELD_CORRECT, vp.FIELD_MLE_SCALE, "advantages"]
        written = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=names).to_padded_tensor()
    finally:
        tq.close()
    mask = step.mask_N_T
    expected = scope_step_weights(
        DriverBatch(rewards_N, group_ids_from_uids(uids), mask, step.old_logp_N_T, step.teacher_logp_N_T),
        vp.OpdkitVerlParams(weighting="scope"),
    )
    for name, values_N in expected.fields_N.items():
        torch.testing.assert_close(written[name], values_N.unsqueeze(-1) * mask, msg=name)
    grpo_N = grpo_advantages(rewards_N, group_ids_from_uids(uids))  # verl's own step ran first
    torch.testing.assert_close(written["advantages"], grpo_N.unsqueeze(-1) * mask, rtol=1e-5, atol=1e-5)
    assert metrics["opdkit/scope_correct_fraction"] == pytest.approx(3 / 8)
