"""``ServerTeacher``: the ``Teacher`` protocol against an OpenAI-compatible server (vLLM or opdkit).

OPD and SCOPE score the student's own tokens under a large teacher served elsewhere (§5.1). This
client works with ``opdkit serve-teacher`` and with a stock ``vllm serve MODEL`` (same tokenizer as the
student). For each row it sends the token ids of prompt ⊕ response and keeps the last |y| prompt log-probs.

The exact request (``POST {url}/v1/completions``, header ``Authorization: Bearer KEY`` when a key is set)::

    {"model": "<served name>", "prompt": [[ids of prompt ⊕ response], ...],
     "echo": true, "max_tokens": 1, "temperature": 1.0,
     "logprobs": K, "prompt_logprobs": K, "return_tokens_as_token_ids": true}

K = ``top_k`` (0: only the sampled tokens' log-probs). vLLM answers with ``choices[i].prompt_logprobs`` (one
``{"<id>": {"logprob", "rank", "decoded_token"}}`` per token, ``null`` first) and the OpenAI ``logprobs`` echo
lists; ``opdkit.teachers.completions`` documents and checks both. ``top_k`` > 0 returns the teacher's top-K
support (docs/algorithms.md §3.3, remote-teacher variant); vLLM caps K at ``--max-logprobs`` (20 by default).
A log-prob ``temperature`` other than 1 (§11 A4) adds ``"logprob_temperature": T``, which only
``opdkit serve-teacher`` understands; against any other server such rows fail and ``check_tokenizer`` refuses.

Reliability (docs/architecture.md "Reliability", docs/algorithms.md §5.7):

- rows go out in requests of ``rows_per_request`` rows, ``max_concurrency`` requests in flight;
- connection errors, timeouts, HTTP 408/429/5xx, unparsable bodies and rows that fail the checks are retried
  up to ``max_retries`` times with exponential backoff and jitter (only the failed rows are re-sent); other
  4xx answers are not retried, but a rejected multi-row request is re-sent row by row to isolate the bad row;
- rows still without scores are invalid: ``valid_N`` False and NaN log-probs, never zeros; they are counted in
  ``stats`` (``teacher/failed_rows``, ``teacher/requests``, ``teacher/retries``, ``teacher/errors/<kind>``)
  and in ``TeacherScores.failed_rows``, which the training loop uses for its consecutive-failure stop.

``check_tokenizer`` compares the tokenizer fingerprint an opdkit server publishes in ``/v1/models``; against
vLLM (no fingerprint) it compares the server's ``/tokenize`` ids of ``PROBE_TEXTS`` with the student's.

Example::

    teacher = TEACHERS.get("server")(url="http://127.0.0.1:8000", api_key="...")
    teacher.check_tokenizer(student_tokenizer)
    scores = teacher.score(prompt_ids, response_ids, pad_to=T)   # scores.valid_N, scores.logp_N_T
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from opdkit.teachers.base import TEACHERS, TeacherScores
from opdkit.teachers.completions import (
    MalformedResponseError,
    MalformedRowError,
    RowLogprobs,
    choices_by_index,
    completion_request,
    parse_choice,
)
from opdkit.teachers.fingerprint import PROBE_TEXTS, fingerprint_differences, tokenizer_fingerprint

log = logging.getLogger("opdkit.teachers.server")

API_KEY_ENV = "OPDKIT_TEACHER_API_KEY"
_RETRYABLE_STATUS = {408, 429}
_TOKENIZER_CHECKS = ("auto", "metadata", "probe", "off")


@dataclass(frozen=True)
class ServerTeacherConfig:
    """Options of the ``server`` teacher (``teacher.kind=server``).

    url: server base URL, with or without ``/v1`` (``http://127.0.0.1:8000``).
    model: served model name; default: the first model of ``GET /v1/models``.
    api_key: bearer key; default: the ``OPDKIT_TEACHER_API_KEY`` environment variable. Never printed.
    timeout_s / connect_timeout_s: per-request read and connect timeouts.
    max_retries: re-sends of a failed request or row after the first try.
    backoff_s / backoff_max_s: retry n waits d/2 + U(0, d/2), d = min(backoff_max_s, backoff_s * 2^(n-1)).
    max_concurrency: requests in flight at once; rows_per_request: rows (prompts) per request.
    temperature: log-prob temperature; values other than 1 need an opdkit server (vLLM returns T = 1).
    tokenizer_check: "auto" (fingerprint, else probe), "metadata", "probe" or "off".
    seed: seed of the backoff jitter (None: from the OS).
    """

    url: str = "http://127.0.0.1:8000"
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    max_retries: int = 3
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    max_concurrency: int = 16
    rows_per_request: int = 4
    temperature: float = 1.0
    tokenizer_check: str = "auto"
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"teacher url {self.url!r} must start with http:// or https://")
        if self.tokenizer_check not in _TOKENIZER_CHECKS:
            raise ValueError(
                f"tokenizer_check {self.tokenizer_check!r}; valid: {', '.join(_TOKENIZER_CHECKS)}"
            )
        positive = ("timeout_s", "connect_timeout_s", "max_concurrency", "rows_per_request", "temperature")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"teacher {name} must be > 0, got {getattr(self, name)}")
        if self.max_retries < 0 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError("teacher max_retries, backoff_s and backoff_max_s must be >= 0")


@dataclass(frozen=True)
class ServerInfo:
    """What ``GET /v1/models`` says about the served model.

    max_sequence_tokens: the longest prompt ⊕ response the server accepts with ``max_tokens=1``
      (``max_model_len - 1``, and at most ``max_batch_tokens`` on an opdkit server); None when unknown.
    fingerprint: the tokenizer fingerprint (opdkit servers only).
    """

    model: str
    max_sequence_tokens: int | None
    fingerprint: dict[str, Any] | None
    is_opdkit: bool


@dataclass(frozen=True)
class _Row:
    index: int
    ids: list[int]
    n_response: int


@dataclass
class _Outcome:
    """Result of scoring some rows: scores, reasons of failed rows, counters."""

    scores: dict[int, RowLogprobs] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)


class _HttpError(Exception):
    def __init__(self, kind: str, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable


class ServerTeacher:
    """A ``Teacher`` backed by an OpenAI-compatible completions server (see the module docstring)."""

    def __init__(self, config: ServerTeacherConfig | None = None) -> None:
        import httpx

        self.config = config or ServerTeacherConfig()
        self.base_url = self.config.url.rstrip("/").removesuffix("/v1")
        key = self.config.api_key or os.environ.get(API_KEY_ENV)
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=httpx.Timeout(self.config.timeout_s, connect=self.config.connect_timeout_s),
            limits=httpx.Limits(max_connections=self.config.max_concurrency),
        )
        self._pool = ThreadPoolExecutor(self.config.max_concurrency, thread_name_prefix="opdkit-teacher")
        self._rng = random.Random(self.config.seed)
        self._rng_lock = threading.Lock()
        self._info: ServerInfo | None = None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()

    def __enter__(self) -> ServerTeacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------- HTTP
    def _backoff(self, attempt: int) -> float:
        cap = min(self.config.backoff_max_s, self.config.backoff_s * 2 ** (attempt - 1))
        with self._rng_lock:
            return cap / 2 + self._rng.uniform(0, cap / 2)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        """One HTTP exchange returning the decoded JSON body, or ``_HttpError`` naming what went wrong."""
        import httpx

        try:
            resp = self._client.request(method, path, json=body)
        except httpx.TimeoutException as exc:
            raise _HttpError("timeout", f"{path}: timed out ({exc!r})", retryable=True) from None
        except httpx.ConnectError as exc:
            raise _HttpError("connect", f"{path}: cannot connect ({exc})", retryable=True) from None
        except httpx.TransportError as exc:
            raise _HttpError("transport", f"{path}: {exc!r}", retryable=True) from None
        if resp.status_code != 200:
            retryable = resp.status_code >= 500 or resp.status_code in _RETRYABLE_STATUS
            kind = "http_5xx" if resp.status_code >= 500 else f"http_{resp.status_code}"
            raise _HttpError(kind, f"{path}: HTTP {resp.status_code}: {resp.text[:300]}", retryable=retryable)
        try:
            return resp.json()
        except ValueError:
            msg = f"{path}: the body is not JSON: {resp.text[:100]!r}"
            raise _HttpError("malformed_response", msg, retryable=True) from None

    def _call_with_retries(self, method: str, path: str, body: Any = None) -> Any:
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                time.sleep(self._backoff(attempt))
            try:
                return self._call(method, path, body)
            except _HttpError as exc:
                if not exc.retryable or attempt == self.config.max_retries:
                    raise ConnectionError(f"teacher server {self.base_url}: {exc}") from None
        raise AssertionError("unreachable")

    # --------------------------------------------------------------------------------- server info
    def server_info(self) -> ServerInfo:
        """``GET /v1/models``, cached after the first success; raises ``ConnectionError``, ``ValueError``."""
        if self._info is None:
            self._info = self._parse_models(self._call_with_retries("GET", "/v1/models"))
        return self._info

    def _parse_models(self, body: Any) -> ServerInfo:
        cards = body.get("data") if isinstance(body, dict) else None
        if not isinstance(cards, list) or not cards:
            raise ValueError(f"teacher server {self.base_url}: /v1/models lists no model: {body!r:.200}")
        by_name = {c.get("id"): c for c in cards if isinstance(c, dict)}
        name = self.config.model or next(iter(by_name))
        if name not in by_name:
            raise ValueError(
                f"teacher model {name!r} is not served at {self.base_url}; served: {list(by_name)}"
            )
        card = by_name[name]
        extra = card.get("opdkit") if isinstance(card.get("opdkit"), dict) else None
        return ServerInfo(
            model=name,
            max_sequence_tokens=_max_sequence_tokens(card, extra),
            fingerprint=extra.get("tokenizer") if extra else None,
            is_opdkit=extra is not None,
        )

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise ``ValueError`` naming the difference when the server's tokenizer is not ``tokenizer``."""
        mode = self.config.tokenizer_check
        if mode == "off":
            return
        info = self.server_info()
        if self.config.temperature != 1.0 and not info.is_opdkit:
            raise ValueError(
                f"teacher temperature {self.config.temperature}: the server at {self.base_url} is not an "
                "opdkit server and returns log-probs at temperature 1 only; use temperature=1 or "
                "opdkit serve-teacher"
            )
        if info.fingerprint is not None and mode in ("auto", "metadata"):
            diffs = fingerprint_differences(info.fingerprint, tokenizer_fingerprint(tokenizer))
            if diffs:
                raise ValueError(
                    f"the teacher server at {self.base_url} ({info.model}) uses another tokenizer than the "
                    f"student; token ids would be misread: {'; '.join(diffs)}"
                )
            return
        if mode == "metadata":
            raise ValueError(
                f"{self.base_url} publishes no tokenizer fingerprint; use tokenizer_check='probe'"
            )
        self._probe_tokenizer(tokenizer, info)

    def _probe_tokenizer(self, tokenizer: Any, info: ServerInfo) -> None:
        for special in (False, True):
            for text in PROBE_TEXTS:
                body = {"model": info.model, "prompt": text, "add_special_tokens": special}
                try:
                    theirs = self._call_with_retries("POST", "/tokenize", body).get("tokens")
                except ConnectionError as exc:
                    raise ValueError(
                        f"cannot check the teacher's tokenizer through {self.base_url}/tokenize ({exc}); "
                        "set tokenizer_check='off' to skip the check at your own risk"
                    ) from None
                ours = [int(i) for i in tokenizer(text, add_special_tokens=special)["input_ids"]]
                if theirs != ours:
                    raise ValueError(
                        f"the teacher server at {self.base_url} tokenizes {text!r} "
                        f"(add_special_tokens={special}) differently from the student: "
                        + _first_difference(theirs if isinstance(theirs, list) else [], ours)
                    )

    # ------------------------------------------------------------------------------------- scoring
    def score(
        self,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        *,
        top_k: int = 0,
        pad_to: int | None = None,
    ) -> TeacherScores:
        """Teacher log-probs of each response (right-padded to ``pad_to``); failed rows are NaN and invalid.

        Never raises for server trouble: unreachable servers, timeouts and bad answers become invalid rows.
        Raises ``ValueError`` for bad arguments (mismatched lengths, an empty prompt, ``pad_to`` too small).
        """
        start = time.perf_counter()
        rows, width = _rows(prompt_ids, response_ids, pad_to)
        outcome = _Outcome()
        info = self._info_for_scoring(outcome)
        to_send = self._precheck(rows, info, outcome)
        chunks = [
            to_send[i : i + self.config.rows_per_request]
            for i in range(0, len(to_send), self.config.rows_per_request)
        ]
        model = info.model if info else self.config.model
        for future in [self._pool.submit(self._score_rows, chunk, top_k, model) for chunk in chunks]:
            _merge(outcome, future.result())
        scores = _assemble(rows, outcome, top_k, width)
        stats = {
            "teacher/rows": float(len(rows)),
            "teacher/failed_rows": float(len(outcome.failed)),
            "teacher/requests": float(outcome.counts["requests"]),
            "teacher/retries": float(outcome.counts["retries"]),
            "teacher/score_s": time.perf_counter() - start,
        }
        stats |= {f"teacher/{k}": float(v) for k, v in outcome.counts.items() if k.startswith("errors/")}
        if outcome.failed:
            first = next(iter(outcome.failed.values()))
            log.warning(
                "teacher server: %d of %d rows failed; e.g. %s", len(outcome.failed), len(rows), first
            )
        return dataclasses.replace(scores, stats=stats)

    def _info_for_scoring(self, outcome: _Outcome) -> ServerInfo | None:
        """Server info if one try gets it; scoring goes on without it (the rows have their own retries)."""
        if self._info is None:
            try:
                self._info = self._parse_models(self._call("GET", "/v1/models"))
            except (_HttpError, ValueError):
                outcome.counts["errors/server_info"] += 1
        return self._info

    def _precheck(self, rows: list[_Row], info: ServerInfo | None, outcome: _Outcome) -> list[_Row]:
        """Rows worth sending; trivially scored (empty responses) and hopeless rows are settled here."""
        to_send = []
        for row in rows:
            if row.n_response == 0:
                outcome.scores[row.index] = RowLogprobs([], [], [])
            elif self.config.temperature != 1.0 and not (info and info.is_opdkit):
                outcome.failed[row.index] = "log-prob temperature != 1 needs a confirmed opdkit server"
                outcome.counts["errors/unsupported_temperature"] += 1
            elif info and info.max_sequence_tokens and len(row.ids) > info.max_sequence_tokens:
                outcome.failed[row.index] = (
                    f"{len(row.ids)} tokens; the server takes {info.max_sequence_tokens}"
                )
                outcome.counts["errors/too_long"] += 1
            else:
                to_send.append(row)
        return to_send

    def _score_rows(self, rows: list[_Row], top_k: int, model: str | None) -> _Outcome:
        """Score ``rows`` in one request, re-sending failed rows with backoff (see the module docstring)."""
        out, pending, reasons = _Outcome(), rows, {}
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                time.sleep(self._backoff(attempt))
                out.counts["retries"] += 1
            body = completion_request(
                [r.ids for r in pending],
                top_k=top_k,
                model=model,
                logprob_temperature=self.config.temperature,
            )
            out.counts["requests"] += 1
            try:
                choices = choices_by_index(self._call("POST", "/v1/completions", body), len(pending))
            except _HttpError as exc:
                out.counts[f"errors/{exc.kind}"] += 1
                if not exc.retryable and len(pending) > 1:  # isolate the row the server rejects
                    for row in pending:
                        _merge(out, self._score_rows([row], top_k, model))
                    return out
                reasons = {r.index: str(exc) for r in pending}
                if not exc.retryable:
                    break
                continue
            except MalformedResponseError as exc:
                out.counts["errors/malformed_response"] += 1
                reasons = {r.index: str(exc) for r in pending}
                continue
            retry = []
            for row, choice in zip(pending, choices):
                try:
                    out.scores[row.index] = parse_choice(choice, row.ids, row.n_response, top_k)
                except MalformedRowError as exc:
                    out.counts["errors/malformed_row"] += 1
                    reasons[row.index] = str(exc)
                    retry.append(row)
            pending = retry
            if not pending:
                break
        out.failed |= {r.index: reasons[r.index] for r in pending}
        return out


def _rows(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_to: int | None
) -> tuple[list[_Row], int]:
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    rows = []
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        if len(p) == 0:
            raise ValueError(f"row {i}: empty prompt; the first response token needs a token before it")
        rows.append(_Row(i, [int(t) for t in p] + [int(t) for t in r], len(r)))
    longest = max((r.n_response for r in rows), default=0)
    width = longest if pad_to is None else pad_to
    if width < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest response ({longest} tokens)")
    return rows, width


def _max_sequence_tokens(card: dict[str, Any], extra: dict[str, Any] | None) -> int | None:
    """``max_model_len - 1`` (room for the generated token), capped by an opdkit server's batch budget."""
    caps = []
    if isinstance(card.get("max_model_len"), int):
        caps.append(card["max_model_len"] - 1)
    if extra and isinstance(extra.get("max_batch_tokens"), int):
        caps.append(extra["max_batch_tokens"])
    return min(caps) if caps else None


def _first_difference(theirs: list[Any], ours: list[int]) -> str:
    at = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
    return f"first difference at token {at}: teacher {theirs[at : at + 3]} vs student {ours[at : at + 3]}"


def _merge(into: _Outcome, other: _Outcome) -> None:
    into.scores |= other.scores
    into.failed |= other.failed
    into.counts.update(other.counts)


def _assemble(rows: list[_Row], outcome: _Outcome, top_k: int, width: int) -> TeacherScores:
    """Right-padded tensors: 0 at padding, NaN over the whole row when it failed (docs/algorithms.md §5.7)."""
    n = len(rows)
    logp_N_T = torch.zeros(n, width)
    valid_N = torch.ones(n, dtype=torch.bool)
    topk_ids_N_T_K = torch.zeros(n, width, top_k, dtype=torch.long) if top_k else None
    topk_logp_N_T_K = torch.zeros(n, width, top_k) if top_k else None
    for row in rows:
        i, m = row.index, row.n_response
        if i in outcome.failed:
            valid_N[i] = False
            logp_N_T[i] = float("nan")
            if topk_logp_N_T_K is not None:
                topk_logp_N_T_K[i] = float("nan")
            continue
        got = outcome.scores[i]
        logp_N_T[i, :m] = torch.tensor(got.logp_T, dtype=torch.float32)
        if topk_ids_N_T_K is not None and topk_logp_N_T_K is not None and m:
            topk_ids_N_T_K[i, :m] = torch.tensor(got.topk_ids_T_K, dtype=torch.long)
            topk_logp_N_T_K[i, :m] = torch.tensor(got.topk_logp_T_K, dtype=torch.float32)
    return TeacherScores(logp_N_T, valid_N, topk_ids_N_T_K, topk_logp_N_T_K)


def make_server_teacher(**options: Any) -> ServerTeacher:
    """The factory of teacher kind ``server``; keyword options are ``ServerTeacherConfig`` fields."""
    names = {f.name for f in dataclasses.fields(ServerTeacherConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"unknown server teacher option(s) {unknown}; valid: {', '.join(sorted(names))}")
    return ServerTeacher(ServerTeacherConfig(**options))


TEACHERS.add("server", make_server_teacher)
