"""Model forwards of the loop: the student on prompt ⊕ response, the self-teacher on its own context.

Both use ``core.sequence`` for packing and alignment (ALGORITHMS.md §0): response logits come from
``logits[:, P−1 : P+T−1]`` with P the prompt width of *that* forward, and are divided by the temperature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from opdkit.core.sequence import pack, response_logits, token_logp
from opdkit.train.batch import StepBatch


@dataclass(frozen=True)
class PolicyOutput:
    """Temperature-scaled response logits (N, T, V) and the sampled tokens' log-probs (N, T)."""

    logits_N_T_V: torch.Tensor
    logp_N_T: torch.Tensor


def forward_response(
    model: torch.nn.Module,
    prompt_ids_N_P: torch.Tensor,
    prompt_mask_N_P: torch.Tensor,
    batch: StepBatch,
    temperature: float,
) -> PolicyOutput:
    """Run ``model`` on the given prompts then the batch's responses (gradient as the caller enables)."""
    packed = pack(prompt_ids_N_P, prompt_mask_N_P, batch.response_ids_N_T, batch.response_mask_N_T)
    logits = model(**packed.model_inputs()).logits
    logits_N_T_V = response_logits(logits, packed).float() / temperature
    return PolicyOutput(logits_N_T_V, token_logp(logits_N_T_V, batch.response_ids_N_T))


def student_forward(model: torch.nn.Module, batch: StepBatch, temperature: float) -> PolicyOutput:
    """The student on its own prompts (with gradient when enabled)."""
    return forward_response(model, batch.prompt_ids_N_P, batch.prompt_mask_N_P, batch, temperature)


@torch.no_grad()
def old_logprobs(
    model: torch.nn.Module, batch: StepBatch, temperature: float, micro_batch: int
) -> torch.Tensor:
    """Pre-update log-probs of the sampled tokens (N, T), computed in micro-batches under no-grad."""
    was_training = model.training
    model.eval()
    out = []
    step = micro_batch or batch.n
    for start in range(0, batch.n, step):
        rows = torch.arange(start, min(start + step, batch.n))
        out.append(student_forward(model, batch.select(rows), temperature).logp_N_T)
    model.train(was_training)
    return torch.cat(out)


def self_teacher_logits(
    weights: Any,
    student: torch.nn.Module,
    rows: dict[str, torch.Tensor],
    batch: StepBatch,
    temperature: float,
) -> torch.Tensor:
    """The self-teacher's response logits (N, T, V) on its reprompted context (``teacher_prompt_*`` rows)."""

    def run(model: torch.nn.Module) -> torch.Tensor:
        was_training = model.training
        model.eval()
        out = forward_response(
            model, rows["teacher_prompt_ids"], rows["teacher_prompt_mask"], batch, temperature
        )
        model.train(was_training)
        return out.logits_N_T_V

    return weights.logits(run, student)
