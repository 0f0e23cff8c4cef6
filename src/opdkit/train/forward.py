"""Model forwards of the loop: the student on prompt ⊕ response, the self-teacher on its own context.

Both use ``core.sequence`` for packing and alignment (docs/algorithms.md §0): response positions are columns
P−1 .. P+T−2 of each forward, P being the prompt width of *that* forward; logits are divided by T.

Two paths (``model.hidden_state_losses``):
- hidden states (default): the decoder's final hidden states at the response positions plus the output
  projection, handed to ``core.chunked``, which computes log-probs and divergences a chunk of tokens at a
  time, so the (N, T, V) logits never exist at once (docs/architecture.md); a prompt shared by several
  rows (a question's G rollouts, a group's self-teacher prompts) is run once (``train.prefix``);
- full logits: ``model(...).logits`` sliced to the response positions (any causal LM).
The hidden-state path is used only for a model whose head reproduces its logits: checked once per model on a
short input (``hidden_path_ok``); a model with logit soft-capping or scaling falls back to full logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from opdkit.core.chunked import LinearHead, StudentInputs, TeacherHidden, chunked_token_logp
from opdkit.core.sequence import pack, token_logp
from opdkit.train.batch import StepBatch
from opdkit.train.prefix import response_hidden


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
    """Full logits of ``model`` on the given prompts then the batch's responses (gradient as enabled)."""
    packed = pack(prompt_ids_N_P, prompt_mask_N_P, batch.response_ids_N_T, batch.response_mask_N_T)
    logits = model(**packed.model_inputs(), logits_to_keep=packed.response_len + 1).logits
    logits_N_T_V = logits[:, : packed.response_len].float() / temperature  # = full logits[:, P-1 : P+T-1]
    return PolicyOutput(logits_N_T_V, token_logp(logits_N_T_V, batch.response_ids_N_T))


def _head(model: torch.nn.Module) -> LinearHead:
    out = model.get_output_embeddings()
    return LinearHead(out.weight, getattr(out, "bias", None))


def forward_hidden(
    model: torch.nn.Module, prompt_ids_N_P: torch.Tensor, prompt_mask_N_P: torch.Tensor, batch: StepBatch
) -> TeacherHidden:
    """The decoder's final hidden states at the response positions (N, T, H) and the output head; each
    distinct prompt is run once (``train.prefix``)."""
    hidden = response_hidden(
        model, prompt_ids_N_P, prompt_mask_N_P, batch.response_ids_N_T, batch.response_mask_N_T
    )
    return TeacherHidden(hidden, _head(model))


@torch.no_grad()
def hidden_path_ok(model: torch.nn.Module) -> bool:
    """Whether hidden states × head reproduce ``model``'s logits (checked once, cached on the model)."""
    cached = getattr(model, "_opdkit_hidden_path_ok", None)
    if cached is not None:
        return cached
    ok = False
    device = next(model.parameters()).device
    try:
        # compared in the weights' own dtype: under autocast two roundings of the same product could differ
        with torch.autocast(device_type=device.type, enabled=False):
            ok = _hidden_matches_logits(model)
    except (AttributeError, NotImplementedError, TypeError):
        ok = False
    model._opdkit_hidden_path_ok = ok
    return ok


def _hidden_matches_logits(model: torch.nn.Module) -> bool:
    ids = torch.arange(1, 6, device=next(model.parameters()).device).unsqueeze(0) % model.config.vocab_size
    hidden = model.get_decoder()(input_ids=ids).last_hidden_state
    head = _head(model)
    mine = hidden @ head.weight_V_H.T + (head.bias_V if head.bias_V is not None else 0)
    return torch.allclose(mine.float(), model(input_ids=ids).logits.float(), atol=1e-3, rtol=1e-3)


def use_hidden(model: torch.nn.Module, enabled: bool) -> bool:
    return enabled and hidden_path_ok(model)


def student_forward(model: torch.nn.Module, batch: StepBatch, temperature: float) -> PolicyOutput:
    """The student's full logits on its own prompts (with gradient when enabled)."""
    return forward_response(model, batch.prompt_ids_N_P, batch.prompt_mask_N_P, batch, temperature)


def student_inputs(model: torch.nn.Module, batch: StepBatch, *, all_tokens: bool = True) -> StudentInputs:
    """The student's hidden states and head for ``core.chunked`` with the sampled tokens; ``all_tokens``
    asks for log-probs at every response token (else only at the loss mask's)."""
    view = forward_hidden(model, batch.prompt_ids_N_P, batch.prompt_mask_N_P, batch)
    mask = batch.response_mask_N_T if all_tokens else None
    return StudentInputs(view.hidden_N_T_H, view.head, batch.response_ids_N_T, mask)


def policy_logp(
    model: torch.nn.Module, batch: StepBatch, temperature: float, *, hidden: bool
) -> torch.Tensor:
    """log π(y_t | x, y_<t) of the sampled tokens, 0 at padding; chunked from hidden states if asked."""
    if use_hidden(model, hidden):
        return chunked_token_logp(student_inputs(model, batch), temperature=temperature).logp_N_T
    out = student_forward(model, batch, temperature).logp_N_T
    return torch.where(batch.response_mask_N_T.bool(), out, torch.zeros_like(out))


@torch.no_grad()
def old_logprobs(
    model: torch.nn.Module, batch: StepBatch, temperature: float, micro_batch: int, *, hidden: bool = True
) -> torch.Tensor:
    """Pre-update log-probs of the sampled tokens (N, T), computed in micro-batches under no-grad."""
    was_training = model.training
    model.eval()
    out = []
    step = micro_batch or batch.n
    for start in range(0, batch.n, step):
        rows = torch.arange(start, min(start + step, batch.n))
        out.append(policy_logp(model, batch.select(rows), temperature, hidden=hidden))
    model.train(was_training)
    return torch.cat(out)


def _teacher_run(rows: dict[str, torch.Tensor], batch: StepBatch, fn: Any):
    def run(model: torch.nn.Module):
        was_training = model.training
        model.eval()
        out = fn(model, rows["teacher_prompt_ids"], rows["teacher_prompt_mask"], batch)
        model.train(was_training)
        return out

    return run


def self_teacher_logits(
    weights: Any,
    student: torch.nn.Module,
    rows: dict[str, torch.Tensor],
    batch: StepBatch,
    temperature: float,
) -> torch.Tensor:
    """The self-teacher's response logits (N, T, V) on its reprompted context (``teacher_prompt_*`` rows)."""
    run = _teacher_run(
        rows, batch, lambda m, ids, mask, b: forward_response(m, ids, mask, b, temperature).logits_N_T_V
    )
    return weights.logits(run, student)


def self_teacher_hidden(
    weights: Any, student: torch.nn.Module, rows: dict[str, torch.Tensor], batch: StepBatch
) -> TeacherHidden:
    """The self-teacher's hidden states and head on its reprompted context, for ``core.chunked``."""
    return weights.hidden(_teacher_run(rows, batch, forward_hidden), student)
