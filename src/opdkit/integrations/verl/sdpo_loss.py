"""The SDPO family's actor loss on verl's engine: the self-teacher's forward inside the student's update.

verl 0.9.1's FSDP engine calls the actor's loss function twice per micro-batch when the batch carries
``distillation_use_topk=True`` (``workers/engine/fsdp/transformer_impl.py``, ``prepare_model_outputs``):

1. as a *logits processor*, ``loss(student_logits=(1, S, V), data=micro_batch)``, with the student's
   temperature-scaled logits over the micro-batch's S packed tokens; it must return per-token tensors
   (1, S), which the engine stores (nested, with their gradient) in ``model_output``;
2. as the *loss*, ``loss(model_output=..., data=micro_batch, dp_group=...)`` -> (scalar, metrics).

``SelfDistillLoss`` uses (1) for the divergence (§4.7): it runs the self-teacher (``self.teacher``, set on the
worker: verl's ref module for the ``ema``/``base`` modes, the actor's own module for ``live``) on the rows'
teacher inputs (``FIELD_TEACHER_IDS``: teacher prompt ⊕ own response, written by the driver), takes the
teacher's final hidden states at the *response positions only*, and computes, ``chunk_tokens`` positions at
a time, teacher logits = h·Wᵀ/T and D = ``opdkit.core.divergences.distillation_token_loss`` against the
student's logits at the same positions (student top-100 + tail, JSD α = 0.5 by default). No (S, V) teacher
tensor exists at once; the student's (S, V) logits are verl's own (its engine materialises them for every
loss). (2) then applies ``opdkit.core``'s loss exactly as ``opdkit train`` does:

- SDPO family (``method="sdpo"``): ``self_distillation_loss`` with IS = min(π_θ/π_old, is_clip), the loss
  mask response × sd_mask (``FIELD_SD_MASK``), the question weight w_q(i) (``FIELD_Q_WEIGHT``: SC-SDPO,
  hard filter or PACED, computed on the driver over the whole step) and ``seq-mean-token-mean`` over all
  sequences: Σ_i w_i·mean_t(IS·D) / B with B the mini-batch's sequence count over all data-parallel ranks
  (verl's ``global_batch_size``); each micro-batch on each rank contributes its rows' share, so the summed
  gradients equal the mini-batch's loss (the rank's loss is multiplied by dp_size because FSDP averages
  gradients over ranks).
- SRPO (``method="srpo"``): ``srpo_loss``: the SDPO branch IS·E·D on the routed rows (``FIELD_SDPO_ROUTE``,
  E the entropy weight ``FIELD_ENTROPY_WEIGHT`` normalised on the driver over the step), the GRPO branch's
  clipped surrogate with the whole-group advantage (``FIELD_ADVANTAGE``) elsewhere, one token-mean over the
  mini-batch's response tokens on all ranks (verl's ``batch_num_tokens``).

Needs ``use_remove_padding=False`` or ``True`` without sequence parallelism (the teacher positions are
computed from the micro-batch's own packing); the trainer refuses sequence parallelism > 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict

from opdkit.core.divergences import distillation_token_loss
from opdkit.core.groups import sequence_mean
from opdkit.core.losses import clipped_surrogate, truncated_is_weight
from opdkit.core.objectives import DistillAggregation, self_distillation_loss, srpo_loss
from opdkit.core.weights import SrpoRouting
from opdkit.integrations.verl.params import FIELD_Q_WEIGHT

FIELD_TEACHER_IDS = "opdkit_teacher_input_ids"  # nested per row: teacher prompt ⊕ response (P_T + R,)
FIELD_SD_MASK = "opdkit_sd_mask"  # per token: 1 on rows with a teacher context (SDPO family)
FIELD_SDPO_ROUTE = "opdkit_sdpo_route"  # per token: 1 on SRPO's SDPO-routed rows
FIELD_ENTROPY_WEIGHT = "opdkit_entropy_weight"  # per token: SRPO's exp(−βH_T)/mean (0 off the route)
FIELD_ADVANTAGE = "opdkit_advantage"  # per token: SRPO's GRPO-branch advantage
OUT_DIVERGENCE = "opdkit_divergence"  # logits-processor output: D at each response position, 0 elsewhere
METHODS = ("sdpo", "srpo")


@dataclass(frozen=True)
class SelfDistillLossConfig:
    """The worker-side loss settings (``opdkit verl-config`` writes them from the method's config).

    method: "sdpo" (SDPO, SC-SDPO, hard filter, PACED: the weight field decides) or "srpo".
    alpha, top_k, tail: the divergence (§4.7). is_clip: IS cap c (None = off). chunk_tokens: teacher
    positions per chunk. clip_low, clip_high, dual_clip: SRPO's GRPO branch.
    """

    method: str = "sdpo"
    alpha: float = 0.5
    top_k: int | None = 100
    tail: bool = True
    is_clip: float | None = 2.0
    chunk_tokens: int = 256
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float | None = 3.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown self-distillation loss {self.method!r}; valid: {', '.join(METHODS)}")


@dataclass(frozen=True)
class ResponsePositions:
    """For the micro-batch's loss rows: the packed index of every response token's predicting position
    (K,), the row (K,) and the token's index in its response (K,)."""

    packed_K: torch.Tensor
    row_K: torch.Tensor
    token_K: torch.Tensor


def _lengths(nested: torch.Tensor) -> torch.Tensor:
    return nested.offsets().diff()


def _row_flag_N(data: TensorDict, name: str) -> torch.Tensor:
    """A per-token field constant over each response -> (b,) bool (False for an empty response)."""
    if name not in data.keys():  # noqa: SIM118  (TensorDict refuses `in` on itself)
        raise KeyError(f"batch field {name!r} is missing: run the SDPO family with the opdkit_sdpo trainer")
    return torch.stack(
        [row.float().max() > 0.5 if row.numel() else row.new_zeros(()).bool() for row in data[name].unbind()]
    )


def response_positions(data: TensorDict, rows_N: torch.Tensor) -> ResponsePositions:
    """Packed positions offset_i + P_i − 1 + t of the response tokens of rows ``rows_N`` (b,) bool."""
    prompt_lens, response_lens = _lengths(data["prompts"]), _lengths(data["responses"])
    offsets = torch.cat([prompt_lens.new_zeros(1), (prompt_lens + response_lens).cumsum(0)[:-1]])
    packed, row, token = [], [], []
    for i in rows_N.nonzero().flatten().tolist():
        t = torch.arange(int(response_lens[i]))
        packed.append(offsets[i] + prompt_lens[i] - 1 + t)
        row.append(torch.full_like(t, i))
        token.append(t)
    if not packed:
        empty = torch.zeros(0, dtype=torch.int64)
        return ResponsePositions(empty, empty, empty)
    return ResponsePositions(torch.cat(packed), torch.cat(row), torch.cat(token))


def _full_weight(weight: torch.Tensor) -> torch.Tensor:
    """An FSDP2 (DTensor) parameter's full value; a plain tensor as it is."""
    return weight.full_tensor() if hasattr(weight, "full_tensor") else weight


@torch.no_grad()
def teacher_hidden(
    teacher: torch.nn.Module, data: TensorDict, where: ResponsePositions
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's final hidden states (K, H) at the positions predicting each response token of
    ``where`` and its output embedding (V, H): row i's teacher input has P_i^T = len − R_i prompt tokens,
    so token t is predicted at P_i^T − 1 + t. Rows are right-padded (causal attention: padding after a row
    never reaches it); only the last column's logits are computed by the model (for ``_check_head``)."""
    rows = where.row_K.unique().tolist()
    seqs = [data[FIELD_TEACHER_IDS][i] for i in rows]
    width = max(int(s.numel()) for s in seqs)
    ids = torch.zeros(len(rows), width, dtype=torch.int64, device=seqs[0].device)
    mask = torch.zeros_like(ids)
    for j, s in enumerate(seqs):
        ids[j, : s.numel()], mask[j, : s.numel()] = s, 1
    positions = torch.arange(width, device=ids.device).expand_as(ids)
    was_training = teacher.training
    teacher.eval()
    out = teacher(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True,
                  logits_to_keep=1, use_cache=False)  # fmt: skip
    teacher.train(was_training)
    hidden = out.hidden_states[-1]
    weight_V_H = _full_weight(teacher.get_output_embeddings().weight).detach()
    full = int(mask[:, -1].argmax())  # a row whose last column is a real token
    _check_head(hidden[full, -1:], out.logits[full, -1:], weight_V_H)
    response_lens = _lengths(data["responses"])
    local = {r: j for j, r in enumerate(rows)}
    row_j = torch.tensor([local[int(r)] for r in where.row_K.tolist()], dtype=torch.int64)
    prompt_T = torch.tensor(
        [int(seqs[local[int(r)]].numel() - response_lens[r]) for r in where.row_K.tolist()]
    )
    return hidden[row_j.to(hidden.device), (prompt_T - 1 + where.token_K).to(hidden.device)], weight_V_H


def _check_head(hidden_last: torch.Tensor, logits_last: torch.Tensor, weight_V_H: torch.Tensor) -> None:
    """hidden·Wᵀ must reproduce the model's own logits (a model with logit scaling or soft-capping would
    need its own head): checked on every teacher call at one position, a (1, V) product."""
    mine = hidden_last.float() @ weight_V_H.float().T
    if not torch.allclose(mine, logits_last.float(), atol=1e-3, rtol=1e-3):
        raise ValueError("the teacher's hidden states times its output embedding do not give its logits")


def _temperature(data: TensorDict) -> float:
    """verl's sampling temperature (one number; a per-sample tensor must hold one value)."""
    value = data["temperature"]
    if torch.is_tensor(value):
        if value.numel() > 1 and not bool((value == value.flatten()[0]).all()):
            raise ValueError("per-sample temperatures are not supported by the self-distillation loss")
        return float(value.flatten()[0])
    return float(value)


class SelfDistillLoss:
    """verl actor loss for the SDPO family (module docstring). ``teacher`` is attached on the worker."""

    def __init__(self, config: SelfDistillLossConfig, teacher: torch.nn.Module | None = None) -> None:
        self.config = config
        self.teacher = teacher

    def __call__(self, model_output=None, data=None, dp_group=None, student_logits=None, **_: Any):
        if student_logits is not None:
            return {OUT_DIVERGENCE: self.token_divergence(student_logits, data)}
        if self.config.method == "srpo":
            return self.srpo_loss(model_output, data)
        return self.sdpo_loss(model_output, data)

    def _loss_rows_N(self, data: TensorDict) -> torch.Tensor:
        return _row_flag_N(data, FIELD_SDPO_ROUTE if self.config.method == "srpo" else FIELD_SD_MASK)

    def token_divergence(self, student_logits: torch.Tensor, data: TensorDict) -> torch.Tensor:
        """(1, S, V) temperature-scaled student logits -> (1, S): D at the loss rows' response positions."""
        if self.teacher is None:
            raise RuntimeError(
                "SelfDistillLoss.teacher is not set: the worker attaches it (opdkit_sdpo trainer)"
            )
        logits_S_V = student_logits[0]
        out_S = torch.zeros(logits_S_V.shape[0], dtype=torch.float32, device=logits_S_V.device)
        where = response_positions(data, self._loss_rows_N(data))
        if where.packed_K.numel() == 0:
            return (out_S + 0.0 * logits_S_V[:, 0]).unsqueeze(0)  # keeps the graph: a zero gradient
        hidden_K_H, weight_V_H = teacher_hidden(self.teacher, data, where)
        hidden_K_H, weight_V_H = hidden_K_H.float(), weight_V_H.float()
        temperature = _temperature(data)
        pieces = []
        for start in range(0, hidden_K_H.shape[0], self.config.chunk_tokens):
            stop = start + self.config.chunk_tokens
            teacher_C_V = (hidden_K_H[start:stop] @ weight_V_H.T) / temperature
            student_C_V = logits_S_V[where.packed_K[start:stop].to(logits_S_V.device)]
            cfg = self.config
            pieces.append(
                distillation_token_loss(
                    student_C_V, teacher_C_V, alpha=cfg.alpha, top_k=cfg.top_k, tail=cfg.tail
                )
            )
        divergence_K = torch.cat(pieces)
        out_S = out_S.index_put((where.packed_K.to(out_S.device),), divergence_K)
        return out_S.unsqueeze(0)

    def _response_tensors(self, model_output: dict, data: TensorDict) -> dict[str, torch.Tensor]:
        """Padded (b, L) response tensors: logp_θ, D, the response mask and old log-probs."""
        from verl.workers.utils.padding import no_padding_2_padding  # verl only on the worker

        padded = data.select("response_mask", "old_log_probs").to_padded_tensor()
        return {
            "logp": no_padding_2_padding(model_output["log_probs"], data),
            "divergence": no_padding_2_padding(model_output[OUT_DIVERGENCE], data),
            "mask": padded["response_mask"].to(torch.bool),
            "old": padded["old_log_probs"].to(torch.float32),
        }

    def sdpo_loss(self, model_output: dict, data: TensorDict) -> tuple[torch.Tensor, dict[str, float]]:
        """Σ_i w_i·mean_t(IS·D) over the micro-batch's rows / (B / dp_size) (module docstring)."""
        t = self._response_tensors(model_output, data)
        loss_mask = t["mask"] & self._loss_rows_N(data).to(t["mask"].device).unsqueeze(-1)
        weight_N = None
        if FIELD_Q_WEIGHT in data.keys():  # noqa: SIM118
            weight_N = sequence_mean(
                data.select(FIELD_Q_WEIGHT).to_padded_tensor()[FIELD_Q_WEIGHT].float(), t["mask"]
            )
        out = self_distillation_loss(
            t["divergence"], loss_mask,
            is_weight_N_T=truncated_is_weight(t["logp"], t["old"], cap=self.config.is_clip),
            question_weight_N=weight_N,
            aggregation=DistillAggregation("seq-mean-token-mean", "per_sequence_all"),
            global_denominator=torch.tensor(float(data["global_batch_size"]) / float(data["dp_size"])),
        )  # fmt: skip
        return out.loss, {"opdkit/sdpo_loss_tokens": float(loss_mask.sum())}

    def srpo_loss(self, model_output: dict, data: TensorDict) -> tuple[torch.Tensor, dict[str, float]]:
        """SRPO's union token-mean over the mini-batch's response tokens on all ranks (module docstring)."""
        t = self._response_tensors(model_output, data)
        names = [FIELD_ENTROPY_WEIGHT, FIELD_ADVANTAGE]
        fields = data.select(*names).to_padded_tensor()
        sdpo_N = self._loss_rows_N(data).to(t["mask"].device)
        sdpo_mask = t["mask"] & sdpo_N.unsqueeze(-1)
        isw = truncated_is_weight(t["logp"], t["old"], cap=self.config.is_clip)
        sdpo_N_T = torch.where(sdpo_mask, t["divergence"] * isw * fields[FIELD_ENTROPY_WEIGHT].float(), 0.0)
        grpo = clipped_surrogate(
            t["logp"], t["old"], sequence_mean(fields[FIELD_ADVANTAGE].float(), t["mask"]),
            clip_low=self.config.clip_low, clip_high=self.config.clip_high, dual_clip=self.config.dual_clip,
            mask_N_T=t["mask"] & ~sdpo_N.unsqueeze(-1),
        )  # fmt: skip
        out = srpo_loss(
            grpo.loss_N_T, sdpo_N_T, SrpoRouting(sdpo_N=sdpo_N, grpo_N=~sdpo_N), t["mask"],
            global_denominator=torch.tensor(float(data["batch_num_tokens"]) / float(data["dp_size"])),
        )  # fmt: skip
        return out.loss, {f"opdkit/srpo_{k}": v for k, v in out.metrics.items()}
