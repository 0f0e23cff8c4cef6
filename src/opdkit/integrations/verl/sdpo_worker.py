"""``OpdkitSdpoWorker``: verl's ``ActorRolloutRefWorker`` plus the self-teacher (imports verl).

The ``opdkit_sdpo`` trainer puts this class in its ``role_worker_mapping`` (verl has no config key for the
worker class). It adds, bound on the driver's worker group like verl's own ``@register`` methods:

- ``opdkit_init_self_distill(loss_config, teacher_mode, rate)``: sets the actor's loss to
  ``SelfDistillLoss`` with the teacher module (the ref model's for ``ema``/``base``, the actor's for ``live``)
  and, for ``ema``, wraps the actor's per-mini-batch ``train_batch`` so that the teacher's shards move by
  ``rate`` toward the actor's after every optimizer step (``ema.ema_step_``);
- ``save_checkpoint`` / ``load_checkpoint``: verl's (the actor), plus this rank's EMA teacher shard in the
  same folder (``ema.teacher_shard_path``), so a resumed run continues from the saved teacher.
"""

from __future__ import annotations

import functools
import os

from verl.single_controller.base.decorator import Dispatch, register
from verl.workers.engine_workers import ActorRolloutRefWorker

from opdkit.integrations.verl.ema import (
    check_teacher_mode,
    ema_step_,
    load_teacher_shard,
    save_teacher_shard,
    teacher_shard_path,
)
from opdkit.integrations.verl.sdpo_loss import SelfDistillLoss, SelfDistillLossConfig


class OpdkitSdpoWorker(ActorRolloutRefWorker):
    """verl's hybrid actor/rollout/ref worker with the SDPO family's teacher (module docstring)."""

    _opdkit_mode: str = "base"

    def _opdkit_teacher_module(self, mode: str):
        if mode == "live":
            return self.actor.engine.module
        if not hasattr(self, "ref"):
            raise RuntimeError(
                f"self-teacher mode {mode!r} needs the reference model (role actor_rollout_ref)"
            )
        return self.ref.engine.module

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def opdkit_init_self_distill(self, loss_config: SelfDistillLossConfig, teacher_mode: str, rate: float):
        self._opdkit_mode = check_teacher_mode(teacher_mode)
        teacher = self._opdkit_teacher_module(teacher_mode)
        self.actor.set_loss_fn(SelfDistillLoss(loss_config, teacher))
        if teacher_mode != "ema":
            return
        train_batch = self.actor.train_batch

        @functools.wraps(train_batch)
        def train_batch_then_ema(data):  # one optimizer step per call (verl's train_mini_batch loop)
            output = train_batch(data)
            ema_step_(teacher, self.actor.engine.module, rate)
            return output

        self.actor.train_batch = train_batch_then_ema

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        super().save_checkpoint(local_path, hdfs_path, global_step, max_ckpt_to_keep)
        if self._opdkit_mode == "ema":
            save_teacher_shard(self.ref.engine.module, teacher_shard_path(local_path, self.rank))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        super().load_checkpoint(local_path, hdfs_path, del_local_after_load)
        path = teacher_shard_path(local_path, self.rank)
        if self._opdkit_mode == "ema":
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: the EMA self-teacher was not saved with this checkpoint")
            load_teacher_shard(self.ref.engine.module, path)
