"""``opdkit_sync``: verl's synchronous V1 trainer plus opdkit's driver-side weights, registered in verl's
``TRAINER_REGISTRY`` (select with ``trainer.v1.trainer_mode=opdkit_sync``).

It overrides one method, ``_compute_advantage``: after verl's own advantage step it reads the whole step
batch from verl's TransferQueue (uids, rewards, response mask, old log-probs and, for SCOPE, the teacher
log-probs that verl's distillation teacher pool computed during the rollout), computes the weights of
``algorithm.opdkit.weighting`` with ``fields.step_weights`` (opdkit.core underneath) and writes them back
as per-token fields, the same layout as verl's ``advantages``. The losses in ``losses.py`` read them on the
workers. Everything else (rollout, teacher scoring, old log-probs, the update, checkpoints) is verl's.

With ``weighting=none`` it behaves exactly like verl's ``sync`` trainer.
"""

from __future__ import annotations

import numpy as np
import torch
import transfer_queue as tq
from tensordict import TensorDict
from verl.protocol import DataProto
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.workers.utils.padding import response_from_nested, response_to_nested

from opdkit.integrations.verl.fields import (
    NEEDS_OLD_LOGP,
    NEEDS_TEACHER,
    DriverBatch,
    group_ids_from_uids,
    step_weights,
)
from opdkit.integrations.verl.params import OpdkitVerlParams, parse_params


def _select_fields(params: OpdkitVerlParams) -> list[str]:
    fields = ["uid", "response_mask", "rm_scores"]
    if params.weighting in NEEDS_OLD_LOGP:
        fields.append("old_log_probs")
    if params.weighting in NEEDS_TEACHER:
        fields.append("teacher_logprobs")
    return fields


def driver_batch_from_tq(data: TensorDict, params: OpdkitVerlParams) -> DriverBatch:
    """The TransferQueue rows of one step (nested per-sample tensors) -> padded ``DriverBatch``.

    ``teacher_logprobs`` covers prompt + response ((S, 1) per sample); ``response_from_nested`` slices the
    response the way verl slices model log-probs (the teacher's are stored already shifted by one).
    """
    response_mask = data["response_mask"]
    teacher = None
    if params.weighting in NEEDS_TEACHER:
        if "teacher_logprobs" not in data.keys():  # noqa: SIM118  (TensorDict refuses `in` on itself)
            raise KeyError("weighting=scope needs teacher log-probs: set distillation.enabled=true")
        teacher = response_from_nested(data["teacher_logprobs"], response_mask).to_padded_tensor(0.0)
        teacher = teacher.squeeze(-1)
    rest = [name for name in data.keys() if name != "teacher_logprobs"]  # noqa: SIM118
    padded = DataProto(batch=data.select(*rest).to_padded_tensor())
    uids = np.array(padded.batch.pop("uid").tolist(), dtype=object)  # as verl's own advantage step reads it
    return DriverBatch(
        rewards_N=padded.batch["rm_scores"].sum(dim=-1),
        group_ids_N=group_ids_from_uids(uids.tolist()),
        mask_N_T=padded.batch["response_mask"],
        old_logp_N_T=padded.batch.get("old_log_probs", None),
        teacher_logp_N_T=teacher,
    )


def per_token_fields(fields_N: dict[str, torch.Tensor], response_mask: torch.Tensor) -> TensorDict:
    """Per-sequence values -> nested per-token tensors (the value on each response token)."""
    lengths = response_mask.offsets().diff()
    width = int(lengths.max()) if lengths.numel() else 0
    out = {
        name: response_to_nested(value_N.to(torch.float32).unsqueeze(-1).expand(-1, width), response_mask)
        for name, value_N in fields_N.items()
    }
    return TensorDict(out, batch_size=len(lengths))


@register_trainer("opdkit_sync")
class OpdkitSyncTrainer(PPOTrainerSync):
    """verl's ``sync`` trainer with opdkit's step-level weights written after the advantage step."""

    def _compute_advantage(self, batch, metrics: dict):
        batch = super()._compute_advantage(batch, metrics=metrics)
        params = parse_params(self.config.algorithm.get("opdkit"))
        if params.weighting == "none":
            return batch
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=_select_fields(params)
        )
        weights = step_weights(driver_batch_from_tq(data, params), params)
        output = per_token_fields(weights.fields_N, data["response_mask"])
        metrics.update(weights.metrics)
        return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=output)
