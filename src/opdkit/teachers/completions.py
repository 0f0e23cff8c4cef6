"""Build ``/v1/completions`` scoring requests and parse vLLM-format answers into per-row teacher scores.

docs/algorithms.md §5.1: the teacher scores the sequence ``ids = prompt ⊕ response`` sent as token ids with
``echo=True, max_tokens=1, temperature=1, logprobs=k``; the last ``|y|`` prompt log-probs are the response's.

Two places of a vLLM answer hold those log-probs; ``parse_choice`` reads the first one present:

1. ``choices[i].prompt_logprobs`` (vLLM's extension, sent because ``prompt_logprobs`` is set or implied by
   ``echo`` + ``logprobs``): a list with one entry per sequence token, ``null`` first, then
   ``{"<token id>": {"logprob": float, "rank": int, "decoded_token": str}, ...}`` holding the scored token and
   the top-k tokens (k or k+1 keys). Keys are exact token ids.
2. ``choices[i].logprobs`` (OpenAI's ``echo`` format): ``token_logprobs`` aligned with ``tokens``, the prompt
   first (``null`` for its first token), then the generated token; ``top_logprobs`` maps token names to
   log-probs. Names are ``"token_id:<id>"`` when the request sets ``return_tokens_as_token_ids``; otherwise
   they are token texts, which cannot be mapped back to ids reliably, so top-k is refused then.

Every row is checked before it is accepted: the entry count matches the sequence length, each response
position carries the id that was sent (so a shifted or truncated list is caught), log-probs are finite and
<= 0, and top-k rows have k alternatives. A failed check raises ``MalformedRowError`` with the reason; the
caller retries and finally marks the row invalid, never filling zeros (docs/algorithms.md §5.7).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TOKEN_ID_PREFIX = "token_id:"
_POSITIVE_SLACK = 1e-4  # servers round; a log-prob a hair above 0 is still a probability of 1


class MalformedRowError(ValueError):
    """A choice that does not hold valid scores for its row; the message says why."""


class MalformedResponseError(ValueError):
    """A response body that cannot be matched to the request at all (not JSON, wrong choices)."""


@dataclass(frozen=True)
class RowLogprobs:
    """Teacher scores of one row's response tokens (T_i of them), top-k lists only when asked."""

    logp_T: list[float]
    topk_ids_T_K: list[list[int]] | None = None
    topk_logp_T_K: list[list[float]] | None = None


def completion_request(
    sequences: Sequence[Sequence[int]],
    *,
    top_k: int,
    model: str | None,
    logprob_temperature: float = 1.0,
) -> dict[str, Any]:
    """The JSON body scoring ``sequences`` (prompt ⊕ response ids each), see ``opdkit.teachers.server``."""
    body: dict[str, Any] = {
        "prompt": [list(map(int, s)) for s in sequences],
        "echo": True,
        "max_tokens": 1,
        "temperature": 1.0,
        "logprobs": top_k,
        "prompt_logprobs": top_k,
        "return_tokens_as_token_ids": True,
    }
    if model is not None:
        body["model"] = model
    if logprob_temperature != 1.0:  # opdkit extension; only sent to servers that announce it
        body["logprob_temperature"] = logprob_temperature
    return body


def choices_by_index(body: Any, n_rows: int) -> list[dict[str, Any]]:
    """The ``choices`` of a response, ordered by ``index``; one per row or ``MalformedResponseError``."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise MalformedResponseError("the response has no list of choices")
    by_index = {c.get("index", i): c for i, c in enumerate(choices)}
    if len(choices) != n_rows or sorted(by_index) != list(range(n_rows)):
        raise MalformedResponseError(
            f"{len(choices)} choices for {n_rows} prompts (indices {sorted(by_index)})"
        )
    return [by_index[i] for i in range(n_rows)]


def parse_choice(choice: dict[str, Any], ids: Sequence[int], n_response: int, top_k: int) -> RowLogprobs:
    """Scores of the last ``n_response`` tokens of ``ids`` from one choice (see the module docstring).

    When both lists are present they must agree on the response's log-probs, which catches a list shifted so
    that the scored token still appears among another position's top-k.
    """
    echo = choice.get("logprobs")
    if choice.get("prompt_logprobs") is not None:
        row = _from_prompt_logprobs(choice["prompt_logprobs"], ids, n_response, top_k)
        if echo is not None:
            other = _from_echo_logprobs(echo, ids, n_response, 0)
            if any(abs(a - b) > 1e-6 for a, b in zip(row.logp_T, other.logp_T)):
                raise MalformedRowError("prompt_logprobs and logprobs disagree on the response's log-probs")
        return row
    if echo is not None:
        return _from_echo_logprobs(echo, ids, n_response, top_k)
    raise MalformedRowError("the choice has neither prompt_logprobs nor logprobs")


def _logprob(value: Any, where: str) -> float:
    if isinstance(value, dict):
        value = value.get("logprob")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedRowError(f"{where}: log-prob {value!r} is not a number")
    if not math.isfinite(value) or value > _POSITIVE_SLACK:
        raise MalformedRowError(f"{where}: log-prob {value!r} is not finite and <= 0")
    return min(float(value), 0.0)


def _top_k(entries: list[tuple[int, float]], k: int, where: str) -> tuple[list[int], list[float]]:
    """The k most likely of (id, log-prob) entries; the scored token is among them only if it is top-k."""
    if len(entries) < k:
        raise MalformedRowError(f"{where}: {len(entries)} alternatives, {k} asked")
    best = sorted(entries, key=lambda e: -e[1])[:k]
    return [e[0] for e in best], [e[1] for e in best]


def _from_prompt_logprobs(entries: Any, ids: Sequence[int], n: int, k: int) -> RowLogprobs:
    if not isinstance(entries, list) or len(entries) != len(ids):
        got = len(entries) if isinstance(entries, list) else type(entries).__name__
        raise MalformedRowError(f"prompt_logprobs has {got} entries for a {len(ids)}-token sequence")
    for j in range(1, len(ids)):  # every position must score the token sent there, the prompt's too
        if not isinstance(entries[j], dict) or str(ids[j]) not in entries[j]:
            msg = f"prompt_logprobs[{j}] does not score the token sent there (id {ids[j]}): misaligned"
            raise MalformedRowError(msg)
    logp, top_ids, top_logp = [], [], []
    for j in range(len(ids) - n, len(ids)):
        where = f"prompt_logprobs[{j}]"
        entry = entries[j]
        logp.append(_logprob(entry[str(ids[j])], where))
        if k:
            if not all(key.isdigit() for key in entry):
                raise MalformedRowError(f"{where}: keys {list(entry)} are not all token ids")
            pairs = [(int(key), _logprob(v, where)) for key, v in entry.items()]
            t_ids, t_logp = _top_k(pairs, k, where)
            top_ids.append(t_ids)
            top_logp.append(t_logp)
    return RowLogprobs(logp, top_ids if k else None, top_logp if k else None)


def _token_id(name: Any, where: str) -> int:
    if not isinstance(name, str) or not name.startswith(TOKEN_ID_PREFIX):
        raise MalformedRowError(
            f"{where}: token {name!r} is text, not 'token_id:<id>' (the server ignored "
            "return_tokens_as_token_ids), so top-k alternatives cannot be mapped to ids"
        )
    try:
        return int(name[len(TOKEN_ID_PREFIX) :])
    except ValueError:
        raise MalformedRowError(f"{where}: bad token name {name!r}") from None


def _from_echo_logprobs(obj: Any, ids: Sequence[int], n: int, k: int) -> RowLogprobs:
    values = obj.get("token_logprobs") if isinstance(obj, dict) else None
    # echo=True lists every prompt token, then max_tokens (0 or 1) generated ones.
    if not isinstance(values, list) or len(values) not in (len(ids), len(ids) + 1):
        got = len(values) if isinstance(values, list) else "no"
        raise MalformedRowError(f"logprobs.token_logprobs has {got} entries for a {len(ids)}-token sequence")
    tokens = obj.get("tokens") or []
    tops = obj.get("top_logprobs") or []
    for j, name in enumerate(tokens[: len(ids)]):  # names are checkable only in the token_id form
        if isinstance(name, str) and name.startswith(TOKEN_ID_PREFIX) and _token_id(name, "") != ids[j]:
            msg = f"logprobs[{j}] scores {name}, not the token sent there (id {ids[j]}): misaligned"
            raise MalformedRowError(msg)
    logp, top_ids, top_logp = [], [], []
    for j in range(len(ids) - n, len(ids)):
        where = f"logprobs[{j}]"
        logp.append(_logprob(values[j], where))
        if k:
            top = tops[j] if j < len(tops) else None
            if not isinstance(top, dict):
                raise MalformedRowError(f"{where}: no top_logprobs")
            pairs = [(_token_id(key, where), _logprob(v, where)) for key, v in top.items()]
            t_ids, t_logp = _top_k(pairs, k, where)
            top_ids.append(t_ids)
            top_logp.append(t_logp)
    return RowLogprobs(logp, top_ids if k else None, top_logp if k else None)
