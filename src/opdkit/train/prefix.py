"""Decoder forwards that compute each distinct prompt once.

The G rollouts of a question share their prompt, and SDPO's self-teacher prompts repeat within a group (every
failed row of a group is shown the same successful sibling), yet a packed forward of prompt ⊕ response runs
the decoder over every row's copy. Here the decoder runs once over the distinct prompts, their key/value
cache is indexed out to every row, and the responses run on top of it:

    distinct prompts (U, P) -decoder-> cache (U) -index rows-> cache (N) -decoder(responses)-> (N, T, H)

It is the same function of the weights as the packed forward (§0 alignment: the hidden state of the last
prompt column predicts response token 0, response column t predicts token t+1), with the same gradient:
autograd flows back through the row indexing, which sums the rows' gradients into the shared prompt
computation. Only the order of floating-point sums differs. Saved work: (N − U)·P of the N·(P + T) token
positions, forward and backward.

It is used when some prompt repeats and the run's forward path allows it (``share_prompts``, decided when
the run starts by ``prefix_sharing_ok``: no activation checkpointing, a plain ``DynamicCache`` of
full-attention layers, and equal hidden states on a short input); otherwise the packed forward runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from opdkit.core.sequence import pack, position_ids_from_mask, response_logits
from opdkit.rollout.kvcache import is_plain_cache


@dataclass(frozen=True)
class SharedPrompts:
    """first_U: one row holding each distinct prompt (U,); inverse_N: the distinct prompt of each row (N,)."""

    first_U: torch.Tensor
    inverse_N: torch.Tensor


def shared_prompts(prompt_ids_N_P: torch.Tensor, prompt_mask_N_P: torch.Tensor) -> SharedPrompts | None:
    """The distinct left-padded prompts, or None when no prompt repeats (nothing to share)."""
    key_N_P = torch.where(prompt_mask_N_P.bool(), prompt_ids_N_P, -1)
    distinct, inverse_N = torch.unique(key_N_P, dim=0, return_inverse=True)
    n, u = key_N_P.shape[0], distinct.shape[0]
    if u == n:
        return None
    rows_N = torch.arange(n, device=key_N_P.device)
    first_U = torch.full((u,), n, dtype=torch.long, device=key_N_P.device)
    first_U.scatter_reduce_(0, inverse_N, rows_N, reduce="amin")
    return SharedPrompts(first_U, inverse_N)


def shared_prefix_hidden(
    decoder: torch.nn.Module,
    prompt_ids_N_P: torch.Tensor,
    prompt_mask_N_P: torch.Tensor,
    response_ids_N_T: torch.Tensor,
    response_mask_N_T: torch.Tensor,
    shared: SharedPrompts,
) -> torch.Tensor | None:
    """Final hidden states at the response positions (N, T, H), each distinct prompt run once (module
    docstring); None when the decoder's cache is not a plain one (the caller then packs)."""
    P, T = prompt_ids_N_P.shape[1], response_ids_N_T.shape[1]
    ids_U_P, mask_U_P = prompt_ids_N_P[shared.first_U], prompt_mask_N_P[shared.first_U]
    out = decoder(
        input_ids=ids_U_P,
        attention_mask=mask_U_P,
        position_ids=position_ids_from_mask(mask_U_P),
        use_cache=True,
    )
    cache = out.past_key_values
    if not is_plain_cache(cache):
        return None
    first_N_1_H = out.last_hidden_state[:, -1:].index_select(0, shared.inverse_N)  # predicts token 0
    if T == 1:
        return first_N_1_H
    cache.batch_select_indices(shared.inverse_N)
    # response columns 0..T-2 predict tokens 1..T-1; the last column predicts past the response
    mask_N_S = torch.cat([prompt_mask_N_P, response_mask_N_T[:, : T - 1]], dim=1)
    rest = decoder(
        input_ids=response_ids_N_T[:, : T - 1], attention_mask=mask_N_S,
        position_ids=position_ids_from_mask(mask_N_S)[:, P:], past_key_values=cache, use_cache=True,
    ).last_hidden_state  # fmt: skip
    return torch.cat([first_N_1_H, rest], dim=1)


def packed_hidden(
    decoder: torch.nn.Module,
    prompt_ids_N_P: torch.Tensor,
    prompt_mask_N_P: torch.Tensor,
    response_ids_N_T: torch.Tensor,
    response_mask_N_T: torch.Tensor,
) -> torch.Tensor:
    """The same (N, T, H) from one packed forward of prompt ⊕ response per row (no cache kept)."""
    packed = pack(prompt_ids_N_P, prompt_mask_N_P, response_ids_N_T, response_mask_N_T)
    hidden = decoder(**packed.model_inputs(), use_cache=False).last_hidden_state
    return response_logits(hidden, packed)


@torch.no_grad()
def prefix_sharing_ok(model: torch.nn.Module) -> bool:
    """Whether the shared-prompt forward reproduces the packed one for ``model`` (called once per run)."""
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.x name
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if checkpointing:
        return False  # the shared-prompt forward keeps a cache across two calls; checkpointed layers do not
    was_training = model.training
    model.eval()
    try:
        # a structural check, in the weights' own dtype: under autocast two orders of rounding could differ
        with torch.autocast(device_type=next(model.parameters()).device.type, enabled=False):
            return _check(model)
    except (AttributeError, NotImplementedError, TypeError, ValueError, RuntimeError):
        return False
    finally:
        model.train(was_training)


def _check(model: torch.nn.Module) -> bool:
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    ids = (torch.tensor([[0, 3, 4, 5], [0, 3, 4, 5], [6, 7, 8, 9]], device=device) % vocab).long()
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]], device=device)
    resp = (torch.tensor([[10, 11, 12], [13, 14, 15], [16, 17, 0]], device=device) % vocab).long()
    resp_mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]], device=device)
    decoder = model.get_decoder()
    shared = shared_prompts(ids, mask)
    mine = shared_prefix_hidden(decoder, ids, mask, resp, resp_mask, shared)
    if mine is None:
        return False
    ref = packed_hidden(decoder, ids, mask, resp, resp_mask)
    tol = 10 * torch.finfo(ref.dtype).eps ** 0.5  # a structural check: rounding differences only
    keep = resp_mask.bool()
    return bool(torch.allclose(mine[keep].float(), ref[keep].float(), atol=tol, rtol=tol))


def response_hidden(
    model: torch.nn.Module,
    prompt_ids_N_P: torch.Tensor,
    prompt_mask_N_P: torch.Tensor,
    response_ids_N_T: torch.Tensor,
    response_mask_N_T: torch.Tensor,
    *,
    share_prompts: bool,
) -> torch.Tensor:
    """The decoder's final hidden states predicting each response token (N, T, H), sharing repeated prompts
    when ``share_prompts`` (the run's choice, module docstring), else from a packed forward."""
    decoder = model.get_decoder()
    shared = shared_prompts(prompt_ids_N_P, prompt_mask_N_P) if share_prompts else None
    if shared is not None:
        hidden = shared_prefix_hidden(
            decoder, prompt_ids_N_P, prompt_mask_N_P, response_ids_N_T, response_mask_N_T, shared
        )
        if hidden is not None:
            return hidden
    return packed_hidden(decoder, prompt_ids_N_P, prompt_mask_N_P, response_ids_N_T, response_mask_N_T)
