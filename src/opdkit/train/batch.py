"""The step batch: every per-rollout tensor and text of one training step, sliceable by rows.

N = Q·G rows (G rollouts of each of Q questions, members of a group contiguous), prompts left-padded to P
columns, responses right-padded to T. ``old_logp_N_T`` is the pre-update student's log-prob of each sampled
token at the log-prob temperature (detached); on-policy it equals the current log-prob, so the PPO ratio is 1.
It is None when the loop did not compute it: a step with one optimizer update whose method needs the old
log-probs only inside the loss, where they equal the current ones (``old_or_current``, §2.2).

Also here: ``Sequences``, the four tensors a model forward reads; ``Rows``, the base of each method's typed
hand-off from ``prepare`` to ``loss`` with the one row selection; ``Prepared``, what ``prepare`` returns.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch


@dataclass(frozen=True)
class Sequences:
    """What a model forward reads: left-padded prompts (N, P) and right-padded responses (N, T) with masks."""

    prompt_ids_N_P: torch.Tensor
    prompt_mask_N_P: torch.Tensor
    response_ids_N_T: torch.Tensor
    response_mask_N_T: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.response_ids_N_T.shape[0])

    def select(self, rows: torch.Tensor) -> Sequences:
        return Sequences(*(t.index_select(0, rows.to(t.device)) for t in dataclasses.astuple(self)))

    def with_prompts(self, prompt_ids_N_P: torch.Tensor, prompt_mask_N_P: torch.Tensor) -> Sequences:
        """The same responses after other prompts (e.g. the self-teacher's reprompted context)."""
        return Sequences(prompt_ids_N_P, prompt_mask_N_P, self.response_ids_N_T, self.response_mask_N_T)


@dataclass(frozen=True)
class StepBatch:
    prompt_ids_N_P: torch.Tensor
    prompt_mask_N_P: torch.Tensor
    response_ids_N_T: torch.Tensor
    response_mask_N_T: torch.Tensor
    group_ids_N: torch.Tensor
    rewards_N: torch.Tensor
    success_N: torch.Tensor
    old_logp_N_T: torch.Tensor | None
    example_index_N: torch.Tensor
    truncated_N: torch.Tensor
    messages: list[list[dict]] = field(default_factory=list)
    response_texts: list[str] = field(default_factory=list)
    feedback: list[str] = field(default_factory=list)
    preds: list[str | None] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.response_ids_N_T.shape[0])

    def select(self, rows: torch.Tensor) -> StepBatch:
        """The batch restricted to ``rows`` (int64 indices), tensors and lists alike."""
        picked = rows.tolist()
        values = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                values[f.name] = None
            elif torch.is_tensor(v):
                values[f.name] = v.index_select(0, rows.to(v.device))
            else:
                values[f.name] = [v[i] for i in picked]
        return StepBatch(**values)

    def sequences(self) -> Sequences:
        """The prompt and response tensors a model forward reads."""
        return Sequences(
            self.prompt_ids_N_P, self.prompt_mask_N_P, self.response_ids_N_T, self.response_mask_N_T
        )

    def unpadded_prompts(self) -> list[list[int]]:
        return [ids[m.bool()].tolist() for ids, m in zip(self.prompt_ids_N_P, self.prompt_mask_N_P)]

    def unpadded_responses(self) -> list[list[int]]:
        return [ids[m.bool()].tolist() for ids, m in zip(self.response_ids_N_T, self.response_mask_N_T)]


def old_or_current(batch: StepBatch, logp_N_T: torch.Tensor) -> torch.Tensor:
    """The pre-update log-probs (N, T), detached: the batch's, or on-policy (None) the current ``logp_N_T``.

    Within the first optimizer update of a step the weights are still the sampling weights, so the two are
    the same function of the same weights (§2.2: ratio exactly 1); the loop leaves ``old_logp_N_T`` None only
    then, which saves one forward pass of the whole batch per step.
    """
    return logp_N_T.detach() if batch.old_logp_N_T is None else batch.old_logp_N_T


@dataclass(frozen=True)
class Rows:
    """Base of a method's hand-off from ``prepare`` to ``loss``: a frozen dataclass whose tensor fields all
    have N rows (leading dimension), e.g. ``ScopeRows.w_student_N``.

    ``select`` is the one row selection of every method (mini- and micro-batches): each tensor field is
    index-selected, a nested ``Rows`` field selects its own rows, None passes through.
    """

    def select(self: R, rows: torch.Tensor) -> R:
        """The same rows object restricted to ``rows`` (int64 indices)."""
        values = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # subclasses are dataclasses
            v = getattr(self, f.name)
            if torch.is_tensor(v):
                v = v.index_select(0, rows.to(v.device))
            elif isinstance(v, Rows):
                v = v.select(rows)
            values[f.name] = v
        return dataclasses.replace(self, **values)  # type: ignore[type-var]


R = TypeVar("R", bound=Rows)


@dataclass(frozen=True)
class Prepared(Generic[R]):
    """What a method computed before the gradient pass (no grad).

    rows: the method's per-row tensors (its ``Rows`` dataclass), sliced with the batch for mini/micro-batches.
    metrics: namespaced floats for ``metrics.jsonl``.
    skip_reason: when set, the step makes no optimizer update and no EMA update (e.g. SC-SDPO with no
      informative question, §6.3), and the reason is logged; with ``optim.step_on_empty`` the loop steps on a
      zero gradient instead (``update.step_without_signal``).
    diagnostics: per-question or per-row lists (equal lengths within a prefix, e.g. ``question/pass_rate``
      and ``question/weight``) written to ``diagnostics.jsonl``, one line per step, for the method-specific
      plots (``eval.plots``); never read by the update.
    """

    rows: R
    metrics: dict[str, float] = field(default_factory=dict)
    skip_reason: str | None = None
    diagnostics: dict[str, list[float]] = field(default_factory=dict)

    def select(self, rows: torch.Tensor) -> Prepared[R]:
        return dataclasses.replace(self, rows=self.rows.select(rows))


def micro_batch_size(batch: StepBatch, rows: int, tokens: int) -> int:
    """Rows per forward/backward: ``rows`` (0 = the whole batch), lowered so that rows × (P + T) ≤ ``tokens``
    when a token budget is set (P + T: the batch's padded width); at least one row."""
    size = rows or batch.n
    if tokens > 0:
        width = batch.prompt_ids_N_P.shape[1] + batch.response_ids_N_T.shape[1]
        size = min(size, max(1, tokens // width))
    return size
