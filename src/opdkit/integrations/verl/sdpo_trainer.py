"""``opdkit_sdpo``: verl's synchronous V1 trainer running SDPO, SC-SDPO, hard filter, PACED or SRPO
(``trainer.v1.trainer_mode=opdkit_sdpo``, settings in ``algorithm.opdkit_sdpo``: ``sdpo_params.py``).

What it changes in verl's step (``trainer_base.PPOTrainer._step``):

- construction: refuses what it cannot honour (``sdpo_params.unsupported``: LoRA, sequence parallelism > 1,
  other trainer modes, verl's own distillation) and forces the reference-model role for the ``ema``/``base``
  teachers (verl creates a ref model only with ``use_kl_loss`` or ``use_kl_in_reward``; the KL term itself is
  never computed: the plugin's loss replaces verl's);
- workers: ``OpdkitSdpoWorker`` (``sdpo_worker.py``) in place of ``ActorRolloutRefWorker``; after
  ``init_workers`` its actor loss becomes ``SelfDistillLoss`` with the teacher attached;
- ``_compute_ref_log_prob``: skipped (the teacher runs inside the actor's loss on its own context);
- ``_compute_advantage``: after verl's, reads the step from TransferQueue, builds every row's teacher
  input (``teacher_context``) and the driver-side fields over the whole step (``sdpo_fields``), for SRPO
  after the teacher's entropy pass, and writes them back (per token, like verl's ``advantages``);
- ``_update_actor``: verl's, with ``distillation_use_topk=True`` so the engine hands the loss the student's
  logits (``sdpo_loss``), and ``distillation_only=False`` (the IS ratio and SRPO's GRPO branch need
  log-probs).

Checkpoints: the worker saves and loads the EMA teacher with the actor.
"""

from __future__ import annotations

import ray
import torch
import transfer_queue as tq
from omegaconf import open_dict
from tensordict import TensorDict
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.metric import reduce_metrics

from opdkit.integrations.verl.sdpo_fields import (
    PACED_KEY,
    SelfDistillSettings,
    StepInputs,
    self_distill_fields,
)
from opdkit.integrations.verl.sdpo_loss import FIELD_TEACHER_IDS, SelfDistillLossConfig
from opdkit.integrations.verl.sdpo_params import SdpoVerlParams, check_supported, parse_sdpo_params
from opdkit.integrations.verl.sdpo_worker import OpdkitSdpoWorker
from opdkit.integrations.verl.teacher_context import CONTEXT_FIELDS, rollout_texts, teacher_inputs
from opdkit.teachers.self_teacher import SelfTeacherOptions


def loss_config(p: SdpoVerlParams) -> SelfDistillLossConfig:
    return SelfDistillLossConfig(
        method="srpo" if p.method == "srpo" else "sdpo", alpha=p.alpha, top_k=p.top_k, tail=p.tail,
        is_clip=p.is_clip, chunk_tokens=p.chunk_tokens, clip_low=p.clip_low, clip_high=p.clip_high,
        dual_clip=p.dual_clip,
    )  # fmt: skip


def field_settings(p: SdpoVerlParams) -> SelfDistillSettings:
    return SelfDistillSettings(
        method=p.method, success_threshold=p.success_threshold, sc_alpha=p.sc_alpha,
        srpo_normalize_std=p.srpo_normalize_std, srpo_beta=p.srpo_beta,
    )  # fmt: skip


def teacher_options(p: SdpoVerlParams) -> SelfTeacherOptions:
    return SelfTeacherOptions(
        weights=p.teacher_mode, update_rate=p.teacher_update_rate, max_reprompt_len=p.max_reprompt_len,
        include_environment_feedback=p.include_environment_feedback,
    )  # fmt: skip


def _nested(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def step_fields(data: TensorDict, tokenizer, p: SdpoVerlParams, entropy_fn=None) -> tuple[TensorDict, dict]:
    """The step's TransferQueue rows -> the fields to write (nested per row) and the driver's metrics.
    ``entropy_fn(teacher_inputs, response_ids) -> (N, T)`` is the teacher's entropy pass (SRPO only)."""
    rollouts = rollout_texts(
        data, tokenizer, success_threshold=p.success_threshold, feedback_key=p.feedback_key
    )
    teacher = teacher_inputs(tokenizer, rollouts, teacher_options(p))
    lengths = [len(r) for r in rollouts.response_ids]
    mask_N_T = torch.arange(max(lengths)).unsqueeze(0) < torch.tensor(lengths).unsqueeze(-1)
    paced = None
    if p.method == "sdpo_paced":
        extra = data["extra_info"].tolist() if "extra_info" in data.keys() else [{}] * len(lengths)  # noqa: SIM118
        paced = torch.tensor([float((e or {}).get(PACED_KEY, float("nan"))) for e in extra])
        if bool(paced.isnan().any()):
            raise KeyError(f"sdpo_paced: a row has no extra_info.{PACED_KEY} (its frozen PACED weight)")
    entropy = entropy_fn(teacher, rollouts.response_ids) if p.method == "srpo" else None
    inputs = StepInputs(rollouts, teacher, mask_N_T, paced_weight_N=paced, teacher_entropy_N_T=entropy)
    out = self_distill_fields(inputs, field_settings(p))
    fields = {FIELD_TEACHER_IDS: _nested([torch.tensor(ids, dtype=torch.int64) for ids in teacher.input_ids])}
    for name, v_N in out.rows_N.items():
        fields[name] = _nested([torch.full((n,), float(v)) for v, n in zip(v_N.tolist(), lengths)])
    for name, v_N_T in out.tokens_N_T.items():
        fields[name] = _nested([v_N_T[i, :n].float() for i, n in enumerate(lengths)])
    return TensorDict(fields, batch_size=len(lengths)), out.metrics


def force_reference_role(config, p: SdpoVerlParams) -> None:
    """The ema/base teachers are verl's ref model, which verl builds only with ``use_kl_loss`` (module
    docstring); the coefficient is set to 0 for clarity (verl's KL loss is never computed)."""
    if p.teacher_mode == "live":
        return
    with open_dict(config):
        config.actor_rollout_ref.actor.use_kl_loss = True
        config.actor_rollout_ref.actor.kl_loss_coef = 0.0


def _teacher_rows(teacher, response_ids: list[list[int]]) -> TensorDict:
    """Teacher inputs laid out like verl's own rows (input_ids = teacher prompt ⊕ response)."""
    seqs = [torch.tensor(ids, dtype=torch.int64) for ids in teacher.input_ids]
    rows = {
        "input_ids": _nested(seqs),
        "position_ids": _nested([torch.arange(len(s)) for s in seqs]),
        "prompts": _nested([s[:plen] for s, plen in zip(seqs, teacher.prompt_lens)]),
        "responses": _nested([torch.tensor(r, dtype=torch.int64) for r in response_ids]),
        "response_mask": _nested([torch.ones(len(r), dtype=torch.int64) for r in response_ids]),
        "loss_mask": _nested([torch.ones(len(r), dtype=torch.int64) for r in response_ids]),
    }
    return TensorDict(rows, batch_size=len(seqs))


@register_trainer("opdkit_sdpo")
class OpdkitSdpoTrainer(PPOTrainerSync):
    """verl's ``sync`` trainer running the SDPO family (module docstring)."""

    def __init__(self, config, *args, **kwargs):
        check_supported(config)
        self.opdkit = parse_sdpo_params(config.algorithm.get("opdkit_sdpo"))
        force_reference_role(config, self.opdkit)
        super().__init__(config, *args, **kwargs)

    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        for role in (Role.ActorRolloutRef, Role.ActorRollout):
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(OpdkitSdpoWorker)

    def init_workers(self):
        super().init_workers()
        p = self.opdkit
        self.actor_rollout_wg.opdkit_init_self_distill(loss_config(p), p.teacher_mode, p.teacher_update_rate)

    def _compute_ref_log_prob(self, batch, metrics: dict):
        return batch  # the self-teacher runs inside the actor's loss, on its own context

    def _teacher_entropy(self, batch, teacher, response_ids: list[list[int]]) -> torch.Tensor:
        """SRPO: the teacher's entropy on its context at the response tokens (N, T), computed by verl's ref
        worker (``calculate_entropy``) on rows stored under their own keys, then cleared."""
        from transfer_queue import KVBatchMeta
        from verl.workers.utils.padding import response_from_nested

        keys = [f"opdkit_teacher/{k}" for k in batch.keys]
        tags = [{"status": "success"} for _ in keys]
        tq.kv_batch_put(
            keys=keys, partition_id=batch.partition_id, fields=_teacher_rows(teacher, response_ids), tags=tags
        )
        temperature = self.config.actor_rollout_ref.rollout.temperature
        info = {"calculate_entropy": True, "compute_loss": False, "temperature": temperature}
        meta = KVBatchMeta(keys=keys, tags=tags, partition_id=batch.partition_id, extra_info=info)
        if self.opdkit.teacher_mode == "live":
            self.actor_rollout_wg.compute_log_prob(meta)
        else:
            self.ref_policy_wg.compute_ref_log_prob(meta)
        data = tq.kv_batch_get(
            keys=keys, partition_id=batch.partition_id, select_fields=["entropy", "response_mask"]
        )
        tq.kv_clear(keys=keys, partition_id=batch.partition_id)
        return response_from_nested(data["entropy"], data["response_mask"]).to_padded_tensor(0.0)

    def _compute_advantage(self, batch, metrics: dict):
        batch = super()._compute_advantage(batch, metrics=metrics)
        names = list(CONTEXT_FIELDS) + (["extra_info"] if self.opdkit.method == "sdpo_paced" else [])
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=names)
        entropy_fn = lambda teacher, response_ids: self._teacher_entropy(batch, teacher, response_ids)  # noqa: E731
        fields, step_metrics = step_fields(data, self.tokenizer, self.opdkit, entropy_fn)
        metrics.update(step_metrics)
        return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)

    def _update_actor(self, batch, metrics: dict):
        """verl's actor update with the logits handed to the loss (module docstring)."""
        cfg = self.config.actor_rollout_ref
        mini_batch = cfg.actor.ppo_mini_batch_size * cfg.rollout.n
        batch.extra_info.update({
            "calculate_entropy": False, "distillation_use_topk": True, "distillation_only": False,
            "global_batch_size": mini_batch, "mini_batch_size": mini_batch, "epochs": cfg.actor.ppo_epochs,
            "seed": cfg.actor.data_loader_seed, "dataloader_kwargs": {"shuffle": cfg.actor.shuffle},
            "temperature": cfg.rollout.temperature,
        })  # fmt: skip
        output = self.actor_rollout_wg.update_actor(batch)
        actor_metrics = {f"actor/{k}": v for k, v in output["metrics"].items()}
        if "actor/mfu" in actor_metrics:  # as verl's own _update_actor names it
            actor_metrics["perf/mfu/actor"] = actor_metrics.pop("actor/mfu")
        metrics.update(reduce_metrics(actor_metrics))
        return batch
