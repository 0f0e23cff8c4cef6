"""The ``/v1/completions`` wire format: request validation and vLLM-style responses.

Request fields understood (others are ignored, as vLLM ignores unknown fields):

- ``prompt``: token ids, a list of ints or a list of such lists (a batch); text prompts are refused.
- ``max_tokens``: 0 (score only) or 1 (also generate one token, as vLLM does for ``max_tokens=1``); default 1.
- ``echo``: prepend the prompt to ``text`` and, with ``logprobs``, its tokens to the ``logprobs`` lists.
- ``logprobs`` = k: per emitted token, its log-prob and the top-k alternatives in ``choices[i].logprobs``.
- ``prompt_logprobs`` = k: ``choices[i].prompt_logprobs``, one ``{token_id: {logprob, rank, decoded_token}}``
  per prompt token (the first is null); defaults to ``logprobs`` when ``echo`` is set.
- ``temperature``: sampling temperature of the generated token (0 = greedy); log-probs stay raw (T = 1), as in
  vLLM's default ``raw_logprobs`` mode.
- ``seed``: makes the generated token reproducible.
- ``return_tokens_as_token_ids``: ``logprobs`` names tokens ``"token_id:123"`` instead of by their text.
- ``logprob_temperature`` (opdkit extension, vLLM has none): log-probs of ``softmax(logits / T)``.

Each ``prompt_logprobs`` entry holds the prompt token itself plus the top-k tokens (k or k+1 keys; keys are
token ids as strings). ``logprobs`` lists are aligned with the emitted tokens; the first prompt token has null
entries. Log-probs are clamped to >= -9999.0 as in vLLM (JSON has no -inf). Errors are
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status for bad requests.

Every numeric field is range-checked here, before any forward pass, so that no request can make a batched
forward fail for the other requests in it (``param`` names the field): ``temperature`` is 0 or in
``TEMPERATURE_RANGE``, ``logprob_temperature`` in ``TEMPERATURE_RANGE`` (smaller values overflow the logits to
inf), ``seed`` in ``SEED_RANGE`` (what ``torch.Generator.manual_seed`` accepts), ``logprobs`` and
``prompt_logprobs`` in [0, max_logprobs], ``max_tokens`` in {0, 1}, token ids in [0, vocab size). A request
of several prompts whose response would hold more than ``Limits.max_response_logprobs`` log-prob entries gets
a 413 (``response_logprobs``); a single prompt is always accepted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, ValidationError

from opdkit.serve.engine import EngineInfo, RowRequest, RowScores

MIN_LOGPROB = -9999.0
TEMPERATURE_RANGE = (1e-3, 1e3)
SEED_RANGE = (-(2**63), 2**64 - 1)
_STATUS_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    413: "RequestTooLargeError",
    429: "RateLimitError",
}


class Decoder(Protocol):
    """Token id(s) -> text (the scoring engine)."""

    def decode_token(self, token_id: int) -> str: ...

    def decode(self, ids: list[int]) -> str: ...


class ApiError(Exception):
    """An error returned to the client as an OpenAI-style JSON body."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        kind = _STATUS_TYPES.get(
            self.status, "InternalServerError" if self.status >= 500 else "InvalidRequestError"
        )
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}


class CompletionRequest(BaseModel):
    """The typed part of a request; ``prompt`` is checked by ``parse_completion_request``."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: Any = None
    max_tokens: StrictInt | None = 1
    echo: StrictBool = False
    logprobs: StrictInt | None = None
    prompt_logprobs: StrictInt | None = None
    temperature: float | None = None
    seed: StrictInt | None = None
    n: StrictInt = 1
    stream: StrictBool = False
    return_tokens_as_token_ids: StrictBool | None = None
    logprob_temperature: float = 1.0


@dataclass(frozen=True)
class Limits:
    """Server-side limits the requests are checked against.

    max_response_logprobs: most log-prob entries one response may hold (``response_logprobs``); bounds the
      response size and the server memory one request can take.
    """

    info: EngineInfo
    max_batch_tokens: int
    max_logprobs: int = 20
    max_prompts: int = 1024
    max_response_logprobs: int = 500_000


def parse_completion_request(body: Any, limits: Limits) -> tuple[CompletionRequest, list[list[int]]]:
    """Validate a decoded JSON body; returns the request and its prompts. Raises ``ApiError(400)``."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        req = CompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        got = repr(first.get("input"))[:200]
        raise ApiError(400, f"{field}: {first['msg']} (got {got})", param=field) from None
    if req.max_tokens is None:  # an explicit null means the default
        req = req.model_copy(update={"max_tokens": 1})
    prompts = _parse_prompt(req.prompt)
    _check_options(req, limits)
    if len(prompts) > limits.max_prompts:
        msg = f"{len(prompts)} prompts in one request; at most {limits.max_prompts}"
        raise ApiError(400, msg, param="prompt")
    max_len = min(limits.info.max_model_len - (req.max_tokens or 0), limits.max_batch_tokens)
    for i, ids in enumerate(prompts):
        if not ids:
            raise ApiError(400, f"prompt {i} is empty", param="prompt")
        if len(ids) > max_len:
            raise ApiError(
                400,
                f"prompt {i} has {len(ids)} tokens; this server accepts at most {max_len} "
                f"(max_model_len {limits.info.max_model_len} minus max_tokens, and max_batch_tokens "
                f"{limits.max_batch_tokens})",
                param="prompt",
            )
        bad = next((t for t in ids if not 0 <= t < limits.info.vocab_size), None)
        if bad is not None:
            msg = f"prompt {i}: token id {bad} is out of range [0, {limits.info.vocab_size})"
            raise ApiError(400, msg, param="prompt")
    _check_response_size(req, prompts, limits)
    return req, prompts


def response_logprobs(req: CompletionRequest, prompts: list[list[int]]) -> int:
    """Upper bound on the log-prob entries of the response: per token (+1 generated), k + 1 for each of
    ``prompt_logprobs`` = k and ``logprobs`` = k that the request asks for (the token itself and its top k).
    """
    per_token = sum(k + 1 for k in (effective_prompt_logprobs(req), req.logprobs) if k is not None)
    return per_token * sum(len(ids) + 1 for ids in prompts)


def _check_response_size(req: CompletionRequest, prompts: list[list[int]], limits: Limits) -> None:
    entries = response_logprobs(req, prompts)
    # One prompt is always accepted: its size is already bounded by max_batch_tokens and max_logprobs, and a
    # client that splits a refused request row by row (opdkit.teachers.server does) must get through.
    if len(prompts) > 1 and entries > limits.max_response_logprobs:
        tokens = sum(len(ids) for ids in prompts)
        asked = f"prompt_logprobs={effective_prompt_logprobs(req)}, logprobs={req.logprobs}"
        msg = (
            f"the response would hold {entries:,} log-prob entries ({len(prompts)} prompts, {tokens:,} "
            f"tokens, {asked}); this server returns at most {limits.max_response_logprobs:,} per request "
            "(--max-response-logprobs; one prompt is always accepted): send fewer prompts per request or ask "
            "for fewer log-probs"
        )
        raise ApiError(413, msg, param="prompt")


def _parse_prompt(prompt: Any) -> list[list[int]]:
    def is_id(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], str)):
        msg = "prompt must be token ids; text prompts are not accepted (use /tokenize)"
        raise ApiError(400, msg, param="prompt")
    if not isinstance(prompt, list) or not prompt:
        msg = "prompt must be a non-empty list of token ids or a list of such lists"
        raise ApiError(400, msg, param="prompt")
    if all(is_id(x) for x in prompt):
        return [list(prompt)]
    for i, row in enumerate(prompt):
        if not isinstance(row, list) or not all(is_id(x) for x in row):
            raise ApiError(400, f"prompt {i} is not a list of integer token ids", param="prompt")
    return [list(row) for row in prompt]


def _check_options(req: CompletionRequest, limits: Limits) -> None:
    if req.n != 1:
        raise ApiError(400, "n must be 1", param="n")
    if req.stream:
        raise ApiError(400, "stream is not supported by this scoring server", param="stream")
    if req.max_tokens not in (0, 1):
        msg = "max_tokens must be 0 or 1: this server scores prompts, it does not generate text"
        raise ApiError(400, msg, param="max_tokens")
    for name in ("logprobs", "prompt_logprobs"):
        k = getattr(req, name)
        if k is not None and not 0 <= k <= limits.max_logprobs:
            raise ApiError(400, f"{name} must be between 0 and {limits.max_logprobs}, got {k}", param=name)
    low, high = TEMPERATURE_RANGE
    if req.temperature is not None and req.temperature != 0 and not low <= req.temperature <= high:
        msg = (
            f"temperature must be a finite number: 0 (greedy) or in [{low:g}, {high:g}], "
            f"got {req.temperature}"
        )
        raise ApiError(400, msg, param="temperature")
    if not low <= req.logprob_temperature <= high:
        msg = (
            f"logprob_temperature must be a finite number in [{low:g}, {high:g}], "
            f"got {req.logprob_temperature}"
        )
        raise ApiError(400, msg, param="logprob_temperature")
    if req.seed is not None and not SEED_RANGE[0] <= req.seed <= SEED_RANGE[1]:
        raise ApiError(400, f"seed must be an integer in [-2**63, 2**64 - 1], got {req.seed}", param="seed")


def effective_prompt_logprobs(req: CompletionRequest) -> int | None:
    """vLLM's rule: with ``echo`` and no explicit ``prompt_logprobs``, prompt log-probs use ``logprobs``."""
    if req.prompt_logprobs is None and req.echo:
        return req.logprobs
    return req.prompt_logprobs


def row_requests(req: CompletionRequest, prompts: list[list[int]]) -> list[RowRequest]:
    """The engine rows of a validated request."""
    top_k = max(effective_prompt_logprobs(req) or 0, req.logprobs or 0)
    temperature = 1.0 if req.temperature is None else req.temperature
    return [
        RowRequest(
            ids=tuple(ids),
            top_k=top_k,
            generate=req.max_tokens == 1,
            temperature=temperature,
            logprob_temperature=req.logprob_temperature,
            seed=req.seed,
        )
        for ids in prompts
    ]


def _entries(scores: RowScores, m: int, k: int) -> list[tuple[int, float, int]]:
    """(token id, log-prob, rank) at scored position m: the scored token first, then the top-k others."""
    token = scores.token_ids[m]
    out = [(token, scores.logp_M[m], scores.rank_M[m])]
    for r, (tid, lp) in enumerate(zip(scores.topk_ids_M_K[m][:k], scores.topk_logp_M_K[m][:k]), start=1):
        if tid != token:
            out.append((tid, lp, r))
    return out


def _prompt_logprobs(
    scores: RowScores, n_prompt: int, k: int, decode: Callable[[int], str]
) -> list[dict[str, Any] | None]:
    out: list[dict[str, Any] | None] = [None]
    for m in range(n_prompt - 1):
        out.append(
            {
                str(tid): {"logprob": max(lp, MIN_LOGPROB), "rank": rank, "decoded_token": decode(tid)}
                for tid, lp, rank in _entries(scores, m, k)
            }
        )
    return out


def _completion_logprobs(
    req: CompletionRequest, scores: RowScores, ids: list[int], decode: Callable[[int], str]
) -> dict[str, list[Any]]:
    """OpenAI ``logprobs`` object over the emitted tokens (prompt if echo, then the generated token)."""
    k = req.logprobs or 0

    def name(tid: int) -> str:
        return f"token_id:{tid}" if req.return_tokens_as_token_ids else decode(tid)

    positions: list[tuple[int, int | None]] = []  # (token id, scored position or None)
    if req.echo:
        positions += [(ids[0], None)] + [(ids[j], j - 1) for j in range(1, len(ids))]
    if req.max_tokens == 1:
        positions.append((scores.token_ids[-1], len(ids) - 1))
    out: dict[str, list[Any]] = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    offset = 0
    for tid, m in positions:
        token = name(tid)
        out["tokens"].append(token)
        out["text_offset"].append(offset)
        offset += len(token)
        if m is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
        else:
            out["token_logprobs"].append(max(scores.logp_M[m], MIN_LOGPROB))
            out["top_logprobs"].append({name(t): max(lp, MIN_LOGPROB) for t, lp, _ in _entries(scores, m, k)})
    return out


def completion_response(
    req: CompletionRequest,
    prompts: list[list[int]],
    scores: list[RowScores],
    model_name: str,
    decoder: Decoder,
) -> dict[str, Any]:
    """The vLLM-format response body for a scored request."""
    prompt_k = effective_prompt_logprobs(req)
    decode = decoder.decode_token
    choices = []
    for i, (ids, row) in enumerate(zip(prompts, scores)):
        text = decode(row.token_ids[-1]) if req.max_tokens == 1 else ""
        if req.echo:
            text = decoder.decode(ids) + text
        logprobs = None if req.logprobs is None else _completion_logprobs(req, row, ids, decode)
        prompt_lps = None if prompt_k is None else _prompt_logprobs(row, len(ids), prompt_k, decode)
        choices.append(
            {
                "index": i,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": "length",
                "stop_reason": None,
                "prompt_logprobs": prompt_lps,
            }
        )
    n_prompt = sum(len(p) for p in prompts)
    n_generated = len(prompts) if req.max_tokens == 1 else 0
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": choices,
        "usage": {
            "prompt_tokens": n_prompt,
            "completion_tokens": n_generated,
            "total_tokens": n_prompt + n_generated,
        },
    }
