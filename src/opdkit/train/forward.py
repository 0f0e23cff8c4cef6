"""Model forwards of the loop: a model on prompt ⊕ response tensors (``batch.Sequences``).

Both paths use ``core.sequence`` for packing and alignment (docs/algorithms.md §0): response positions are
columns P−1 .. P+T−2 of each forward, P being the prompt width of *that* forward; logits are divided by T.

- hidden states: the decoder's final hidden states at the response positions plus the output projection,
  handed to ``core.chunked``, which computes log-probs and divergences a chunk of tokens at a time, so the
  (N, T, V) logits never exist at once (docs/architecture.md); a prompt shared by several rows (a question's
  G rollouts, a group's self-teacher prompts) is run once (``train.prefix``);
- full logits: ``model(...).logits`` sliced to the response positions (any causal LM).
Which one a run uses is chosen once when it starts (``train.student.choose_forward``): the hidden-state path
needs a model whose head reproduces its logits (``hidden_path_ok``); a model with logit soft-capping or
scaling gets full logits. Prompt sharing is decided then too (``prefix.prefix_sharing_ok``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from opdkit.core.chunked import LinearHead, TeacherHidden
from opdkit.core.sequence import pack, token_logp
from opdkit.train.batch import Sequences
from opdkit.train.prefix import response_hidden


@dataclass(frozen=True)
class PolicyOutput:
    """Temperature-scaled response logits (N, T, V) and the sampled tokens' log-probs (N, T)."""

    logits_N_T_V: torch.Tensor
    logp_N_T: torch.Tensor


def forward_response(model: torch.nn.Module, seqs: Sequences, temperature: float) -> PolicyOutput:
    """Full logits of ``model`` on ``seqs``' prompts then responses (gradient as enabled)."""
    packed = pack(seqs.prompt_ids_N_P, seqs.prompt_mask_N_P, seqs.response_ids_N_T, seqs.response_mask_N_T)
    logits = model(**packed.model_inputs(), logits_to_keep=packed.response_len + 1).logits
    logits_N_T_V = logits[:, : packed.response_len].float() / temperature  # = full logits[:, P-1 : P+T-1]
    return PolicyOutput(logits_N_T_V, token_logp(logits_N_T_V, seqs.response_ids_N_T))


def output_head(model: torch.nn.Module) -> LinearHead:
    """``model``'s output projection as a ``core.chunked`` head (with the weights' gradient)."""
    out = model.get_output_embeddings()
    return LinearHead(out.weight, getattr(out, "bias", None))


def forward_hidden(model: torch.nn.Module, seqs: Sequences, *, share_prompts: bool) -> TeacherHidden:
    """The decoder's final hidden states at the response positions (N, T, H) and the output head; with
    ``share_prompts`` each distinct prompt is run once (``train.prefix``)."""
    hidden = response_hidden(
        model, seqs.prompt_ids_N_P, seqs.prompt_mask_N_P, seqs.response_ids_N_T, seqs.response_mask_N_T,
        share_prompts=share_prompts,
    )  # fmt: skip
    return TeacherHidden(hidden, output_head(model))


@torch.no_grad()
def hidden_path_ok(model: torch.nn.Module) -> bool:
    """Whether hidden states × head reproduce ``model``'s logits, on a short input (called once per run)."""
    device = next(model.parameters()).device
    try:
        # compared in the weights' own dtype: under autocast two roundings of the same product could differ
        with torch.autocast(device_type=device.type, enabled=False):
            return _hidden_matches_logits(model)
    except (AttributeError, NotImplementedError, TypeError):
        return False


def _hidden_matches_logits(model: torch.nn.Module) -> bool:
    ids = torch.arange(1, 6, device=next(model.parameters()).device).unsqueeze(0) % model.config.vocab_size
    hidden = model.get_decoder()(input_ids=ids).last_hidden_state
    head = output_head(model)
    mine = hidden @ head.weight_V_H.T + (head.bias_V if head.bias_V is not None else 0)
    return torch.allclose(mine.float(), model(input_ids=ids).logits.float(), atol=1e-3, rtol=1e-3)
