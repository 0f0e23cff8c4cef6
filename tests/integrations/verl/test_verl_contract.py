"""Contract: the registered estimators and losses called exactly as verl 0.9.1 calls them.

Estimators go through ``compute_advantage_for_multi_trajectories`` (the V1 trainer's advantage step) with a
``DataProto`` and the composed ``algorithm`` config; losses through ``distillation_ppo_loss`` (the actor's
loss function when distillation is on) with packed micro-batch TensorDicts in verl's no-padding layout and the
configs the actor worker instantiates. Expected values come from verl's own built-ins or from opdkit.core on
the padded tensors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("verl")

from verl import DataProto
from verl.trainer.distillation.losses import distillation_ppo_loss
from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories
from verl_testkit import (  # noqa: F401  (verl_plugin is a fixture)
    actor_and_distillation_configs,
    broadcast_N_T,
    composed_config,
    packed_batch,
    random_step_values,
    verl_plugin,
)

from opdkit.core.divergences import kl_estimate
from opdkit.core.losses import aggregate
from opdkit.core.objectives import ClipConfig, ScopeInputs, scope_loss
from opdkit.core.weights import ScopeWeights
from opdkit.integrations.verl import params as vp
from opdkit.integrations.verl.fields import DriverBatch, group_ids_from_uids, scope_step_weights

pytestmark = pytest.mark.usefixtures("verl_plugin")


def _advantages(estimator: str, rewards_N: torch.Tensor, uids: list[str], extra: tuple[str, ...] = ()):
    """Run the V1 trainer's advantage step on one-token responses; returns advantages (N,)."""
    algorithm = composed_config((f"algorithm.adv_estimator={estimator}", *extra)).algorithm
    data = DataProto.from_dict(
        tensors={"token_level_rewards": rewards_N.unsqueeze(-1), "response_mask": torch.ones(len(uids), 1)},
        non_tensors={"uid": np.array(uids, dtype=object)},
    )
    keys = [f"{uid}_{i}_0" for i, uid in enumerate(uids)]  # verl's {uid}_{session}_{index} keys
    out = compute_advantage_for_multi_trajectories(
        data,
        batch_keys=keys,
        adv_estimator=algorithm.adv_estimator,
        num_repeat=4,
        norm_adv_by_std_in_grpo=algorithm.norm_adv_by_std_in_grpo,
        config=algorithm,
    )
    return out.batch["advantages"][:, 0]


UIDS = [f"q{g}" for g in range(4) for _ in range(4)]
# k successes of 4: q0 1, q1 2, q2 0, q3 4
REWARDS = torch.tensor([1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.float32)


@pytest.mark.parametrize("normalize", ["true", "false"])
def test_opdkit_grpo_through_verls_advantage_step_equals_builtin_grpo(normalize: str) -> None:
    extra = (f"algorithm.norm_adv_by_std_in_grpo={normalize}",)
    ours = _advantages("opdkit_grpo", REWARDS, UIDS, extra)
    theirs = _advantages("grpo", REWARDS, UIDS, extra)
    torch.testing.assert_close(ours, theirs)


def test_opdkit_sc_grpo_weights_the_grpo_advantage_by_question() -> None:
    # GRPO (unbiased std, n = 4): q0 p=1/4, std 0.5 -> A = +1.5 / -0.5; q1 p=1/2, std 1/sqrt(3) -> ±sqrt(3)/2;
    # q2, q3 degenerate -> 0. SC weights α=0.5: u0 = sqrt(3/16) = 0.4330127, u1 = 0.5, mean 0.4665064,
    # w0 = 0.9282032, w1 = 1.0717968 (mean 1 over the informative q0, q1); w2 = w3 = 0.
    w0, w1, half_sqrt3 = 0.9282032, 1.0717968, 0.8660254
    expected = torch.tensor(
        [1.5 * w0, -0.5 * w0, -0.5 * w0, -0.5 * w0]
        + [half_sqrt3 * w1, half_sqrt3 * w1, -half_sqrt3 * w1, -half_sqrt3 * w1]
        + [0.0] * 8
    )
    ours = _advantages("opdkit_sc_grpo", REWARDS, UIDS, ("+algorithm.opdkit.sc_alpha=0.5",))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_opdkit_sc_grpo_rejects_an_unknown_opdkit_key() -> None:
    with pytest.raises(KeyError, match=r"algorithm\.opdkit\.alpha.*valid: weighting"):
        _advantages("opdkit_sc_grpo", REWARDS, UIDS, ("+algorithm.opdkit.alpha=0.5",))


def _distill_configs(loss_mode: str, *extra: str):
    return actor_and_distillation_configs(
        (
            "distillation.enabled=true",
            "distillation.teacher_models.teacher_model.model_path=/teacher",  # never loaded here
            "distillation.teacher_models.teacher_model.inference.tensor_model_parallel_size=1",
            "distillation.nnodes=1",
            "distillation.n_gpus_per_node=1",
            "actor_rollout_ref.rollout.name=vllm",  # the teacher's engine (top-k checks its log-prob cap)
            f"distillation.distillation_loss.loss_mode={loss_mode}",
            "distillation.distillation_loss.use_task_rewards=false",
            "distillation.distillation_loss.loss_max_clamp=null",
            *extra,
        )
    )


def _loss_and_grad(loss_mode: str, step, fields=None, extra: tuple[str, ...] = ()):
    actor, distill = _distill_configs(loss_mode, *extra)
    batch = packed_batch(step, per_token_fields=fields)
    step.logp_N_T.grad = None
    loss, metrics = distillation_ppo_loss(actor, distill, model_output=batch.model_output, data=batch.data)
    loss.backward()
    return loss.detach(), step.logp_N_T.grad.clone(), metrics


PROMPTS = [3, 2, 5, 4, 2, 3, 4, 2, 3, 5, 2, 4]
RESPONSES = [4, 7, 1, 6, 5, 3, 7, 2, 6, 4, 5, 3]


def test_sc_k3_with_unit_weights_equals_verls_k3_loss() -> None:
    step = random_step_values(PROMPTS, RESPONSES, seed=1)
    ones = {vp.FIELD_Q_WEIGHT: torch.ones(len(PROMPTS), max(RESPONSES))}
    ours, ours_grad, _ = _loss_and_grad("opdkit_sc_k3", step, ones)
    theirs, theirs_grad, _ = _loss_and_grad("k3", step)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_grad, theirs_grad)


def test_sc_k3_multiplies_each_sequence_by_its_question_weight() -> None:
    step = random_step_values(PROMPTS, RESPONSES, seed=2)
    w_N = torch.linspace(0.0, 2.0, len(PROMPTS))
    fields = {vp.FIELD_Q_WEIGHT: broadcast_N_T(w_N, max(RESPONSES))}
    ours, ours_grad, _ = _loss_and_grad("opdkit_sc_k3", step, fields)
    logp = step.logp_N_T.detach().requires_grad_(True)
    expected = aggregate(
        w_N.unsqueeze(-1) * kl_estimate(logp, step.teacher_logp_N_T, "k3"), step.mask_N_T, "token-mean"
    )
    expected.backward()
    torch.testing.assert_close(ours, expected.detach())
    torch.testing.assert_close(ours_grad, logp.grad)


def _scope_step(seed: int, agg: str):
    """12 rollouts in 3 groups: g0 mixed, g1 all wrong, g2 all correct; SCOPE fields from the driver code."""
    step = random_step_values(PROMPTS, RESPONSES, seed=seed)
    rewards_N = torch.tensor([1, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.float32)
    group_ids = group_ids_from_uids(["a"] * 4 + ["b"] * 4 + ["c"] * 4)
    weights = scope_step_weights(
        DriverBatch(rewards_N, group_ids, step.mask_N_T, step.old_logp_N_T, step.teacher_logp_N_T),
        vp.OpdkitVerlParams(weighting="scope", scope_agg=agg),
    )
    width = max(RESPONSES)
    fields = {name: broadcast_N_T(values_N, width) for name, values_N in weights.fields_N.items()}
    return step, fields, rewards_N > 0.5, weights.fields_N


def _core_scope(step, correct_N, fields_N, agg: str):
    logp = step.logp_N_T.detach().requires_grad_(True)
    inputs = ScopeInputs(logp, step.old_logp_N_T, step.teacher_logp_N_T, step.mask_N_T, correct_N)
    weights = ScopeWeights(fields_N[vp.FIELD_W_STUDENT], fields_N[vp.FIELD_W_TEACHER])
    out = scope_loss(inputs, weights, clip=ClipConfig(clip_low=0.2, clip_high=0.2, dual_clip=3.0), agg=agg)
    out.loss.backward()
    return out.loss.detach(), logp.grad


SCOPE_FLAGS = ("distillation.distillation_loss.use_policy_gradient=false",)


@pytest.mark.parametrize("agg", ["code", "joint"])
def test_scope_loss_through_verl_equals_core_scope_loss(agg: str) -> None:
    step, fields, correct_N, fields_N = _scope_step(3, agg)
    ours, ours_grad, metrics = _loss_and_grad("opdkit_scope", step, fields, SCOPE_FLAGS)
    expected, expected_grad = _core_scope(step, correct_N, fields_N, agg)
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(ours_grad, expected_grad)
    assert "opdkit/scope_pg_loss" in metrics


def test_scope_micro_batches_sum_to_the_whole_batch_loss() -> None:
    # verl sums micro-batch losses whose token-mean uses the mini-batch's token count; the MLE scale comes
    # from the driver's whole step, so the split does not change the loss (never a per-micro-batch mean).
    step, fields, correct_N, fields_N = _scope_step(4, "code")
    actor, distill = _distill_configs("opdkit_scope", *SCOPE_FLAGS)
    total_tokens = int(sum(RESPONSES))
    losses = []
    for rows in ([0, 5, 9, 11], [1, 2, 3, 4], [6, 7, 8, 10]):  # shuffled, group-mixing micro-batches
        batch = packed_batch(
            step, rows, fields, batch_num_tokens=total_tokens, global_batch_size=len(RESPONSES)
        )
        loss, _ = distillation_ppo_loss(actor, distill, model_output=batch.model_output, data=batch.data)
        losses.append(loss)
    expected, _ = _core_scope(step, correct_N, fields_N, "code")
    torch.testing.assert_close(torch.stack(losses).sum().detach(), expected)


def test_sc_forward_kl_topk_weights_verls_topk_loss() -> None:
    step = random_step_values(PROMPTS, RESPONSES, seed=5)
    w_N = torch.linspace(0.5, 1.5, len(PROMPTS))
    batch = packed_batch(step, per_token_fields={vp.FIELD_Q_WEIGHT: broadcast_N_T(w_N, max(RESPONSES))})
    gen = torch.Generator().manual_seed(5)
    lengths = [p + r for p, r in zip(PROMPTS, RESPONSES)]
    outputs = {  # what verl's logits processor leaves in model_output for top-k losses
        name: torch.nested.as_nested_tensor(
            [torch.rand(n, generator=gen) for n in lengths], layout=torch.jagged
        )
        for name in ("distillation_losses", "student_mass", "teacher_mass")
    }
    runs = {}
    for mode in ("forward_kl_topk", "opdkit_sc_forward_kl_topk"):
        actor, distill = _distill_configs(mode, "distillation.distillation_loss.use_policy_gradient=false")
        runs[mode], _ = distillation_ppo_loss(actor, distill, model_output=outputs, data=batch.data)
    # the per-token losses are weighted, so compare against verl's loss recomputed with weights folded in
    from verl.workers.utils.padding import no_padding_2_padding

    per_token = no_padding_2_padding(outputs["distillation_losses"], batch.data)
    expected = aggregate(w_N.unsqueeze(-1) * per_token, step.mask_N_T, "token-mean")
    torch.testing.assert_close(runs["opdkit_sc_forward_kl_topk"], expected)
    torch.testing.assert_close(runs["forward_kl_topk"], aggregate(per_token, step.mask_N_T, "token-mean"))


def test_missing_driver_fields_name_the_trainer_to_use() -> None:
    step = random_step_values(PROMPTS, RESPONSES, seed=6)
    with pytest.raises(KeyError, match=r"opdkit_q_weight.*trainer\.v1\.trainer_mode=opdkit_sync"):
        _loss_and_grad("opdkit_sc_k1", step)


def test_scope_rejects_a_non_token_mean_aggregation() -> None:
    step, fields, _, _ = _scope_step(7, "code")
    extra = (*SCOPE_FLAGS, "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean")
    with pytest.raises(ValueError, match="loss_agg_mode=token-mean"):
        _loss_and_grad("opdkit_scope", step, fields, extra)
