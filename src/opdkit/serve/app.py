"""The FastAPI application and the ``serve`` entry point behind ``opdkit serve-teacher``.

Routes (all JSON):

- ``GET /health``: ``{"status": "ok", "forward_passes", "rows_scored", "max_rows_per_forward",
  "requests_in_flight", "isolated_batches"}`` (POSTs being served; batches that failed and were retried row
  by row).
- ``GET /v1/models``: the served model as vLLM describes it (``id``, ``max_model_len``, ...) plus an
  ``opdkit`` object: the tokenizer fingerprint (``opdkit.teachers.fingerprint``), vocabulary size, limits.
- ``POST /v1/completions``: token-id prompts scored in vLLM's format (``opdkit.serve.protocol``).
- ``POST /tokenize`` ``{"prompt": text, "add_special_tokens": bool}`` ->
  ``{"tokens", "count", "max_model_len"}`` and ``POST /detokenize`` ``{"tokens": ids}`` ->
  ``{"prompt": text}``, as in vLLM.

With an API key every request (any route) needs ``Authorization: Bearer KEY`` or gets 401 (an empty key means
no key). Bad requests get a 4xx with ``{"error": {"message", ...}}``; a forward that fails is retried row by
row, so only the request whose row fails gets a 500.

One client cannot take the server down or fail the others (``ServeConfig`` holds the caps): a body over
``max_body_bytes`` gets a 413 before it is read in full, a response over ``max_response_logprobs`` log-prob
entries a 413 before any forward, and a POST beyond ``max_concurrent_requests`` in flight a 429 with
``Retry-After`` (``opdkit.teachers.server`` retries 429s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from opdkit.serve.batcher import Batcher
from opdkit.serve.engine import ScoringEngine
from opdkit.serve.protocol import (
    ApiError,
    Limits,
    completion_response,
    parse_completion_request,
    row_requests,
)
from opdkit.teachers.fingerprint import tokenizer_fingerprint

log = logging.getLogger("opdkit.serve")


@dataclass(frozen=True)
class ServeConfig:
    """Options of ``opdkit serve-teacher``.

    model: Hugging Face causal LM directory (or hub id); also the served model name by default.
    host, port: where to listen; 127.0.0.1 by default (local clients only).
    api_key: when set, every request needs ``Authorization: Bearer <api_key>``.
    max_batch_tokens: padded-token budget of one forward (rows * longest row); also the longest prompt.
    max_batch_rows: at most this many rows per forward (1 disables batching; used by the benchmark).
    max_model_len: longest prompt + generated token (default: the model's ``max_position_embeddings``).
    max_logprobs: largest ``logprobs`` / ``prompt_logprobs`` accepted (vLLM's default is 20).
    device, dtype: where and in which precision the model runs (float32, bfloat16, float16).
    max_body_bytes: largest request body (413 beyond it); 8 MiB is about a million token ids.
    max_response_logprobs: most log-prob entries in one response of several prompts, (tokens + 1) x (k + 1)
      per log-prob list (413 beyond it; one prompt always passes); 500,000 entries are about 25 MB of JSON.
    max_concurrent_requests: POST requests in flight at once (429 with Retry-After beyond it).
    An empty ``api_key`` means no key, as None does.
    """

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch_tokens: int = 8192
    max_batch_rows: int = 256
    max_model_len: int | None = None
    max_logprobs: int = 20
    served_model_name: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    max_body_bytes: int = 8 * 1024 * 1024
    max_response_logprobs: int = 500_000
    max_concurrent_requests: int = 64

    def __post_init__(self) -> None:
        if self.api_key == "":
            object.__setattr__(self, "api_key", None)  # "--api-key ''" means no key, everywhere
        for name in (
            "max_body_bytes",
            "max_response_logprobs",
            "max_concurrent_requests",
            "max_batch_tokens",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _error_response(err: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _too_large(max_bytes: int) -> ApiError:
    msg = f"the request body is over {max_bytes:,} bytes, this server's limit (--max-body-bytes)"
    return ApiError(413, msg)


async def _json_body(request: Request) -> Any:
    """The decoded JSON body, read up to ``request.app.state.max_body_bytes`` (413 beyond it)."""
    max_bytes = request.app.state.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and (len(declared) > 18 or int(declared) > max_bytes):
        raise _too_large(max_bytes)  # refused before reading it
    chunks, size = [], 0
    async for chunk in request.stream():  # a chunked body has no length: count as it arrives
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as exc:  # also ints over 4,300 digits and absurd nesting
        raise ApiError(400, f"the request body is not valid JSON: {str(exc)[:200]}") from None


def _model_card(engine: ScoringEngine, config: ServeConfig, name: str, limits: Limits) -> dict[str, Any]:
    import opdkit

    return {
        "id": name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "opdkit",
        "root": config.model,
        "parent": None,
        "max_model_len": engine.info.max_model_len,
        "permission": [],
        "opdkit": {
            "version": opdkit.__version__,
            "tokenizer": tokenizer_fingerprint(engine.tokenizer),
            "vocab_size": engine.info.vocab_size,
            "max_batch_tokens": limits.max_batch_tokens,
            "max_logprobs": limits.max_logprobs,
            "max_response_logprobs": limits.max_response_logprobs,
            "logprob_temperature": True,
        },
    }


def create_app(engine: ScoringEngine, config: ServeConfig) -> FastAPI:
    """The ASGI app serving ``engine`` (see the module docstring)."""
    name = config.served_model_name or config.model
    limits = Limits(
        engine.info,
        max_batch_tokens=config.max_batch_tokens,
        max_logprobs=config.max_logprobs,
        max_response_logprobs=config.max_response_logprobs,
    )
    batcher = Batcher(engine, max_batch_tokens=config.max_batch_tokens, max_batch_rows=config.max_batch_rows)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        batcher.close()

    app = FastAPI(title="opdkit teacher server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.max_body_bytes = config.max_body_bytes
    _install_guards(app, config)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return _error_response(err)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return _error_response(ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(engine, config, name, limits)]}

    app.include_router(_scoring_routes(engine, batcher, limits, name))
    app.include_router(_tokenizer_routes(engine))
    return app


def _install_guards(app: FastAPI, config: ServeConfig) -> None:
    """The concurrency cap and the API key check (the key check runs first: it is added last)."""
    app.state.requests_in_flight = 0  # POST requests being served; one event loop, so no lock is needed

    @app.middleware("http")
    async def limit_concurrency(request: Request, call_next: Any) -> Response:
        if request.method != "POST":
            return await call_next(request)
        if app.state.requests_in_flight >= config.max_concurrent_requests:
            msg = (
                f"{config.max_concurrent_requests} requests are already in flight, this server's limit "
                "(--max-concurrent-requests); retry after the Retry-After seconds"
            )
            return _error_response(ApiError(429, msg), headers={"Retry-After": "1"})
        app.state.requests_in_flight += 1
        try:
            return await call_next(request)
        finally:
            app.state.requests_in_flight -= 1

    expected = f"Bearer {config.api_key}".encode() if config.api_key is not None else None

    @app.middleware("http")
    async def require_api_key(request: Request, call_next: Any) -> Response:
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not secrets.compare_digest(given, expected):  # constant time: no key guessing by timing
                err = ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'")
                return _error_response(err, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)


def _scoring_routes(engine: ScoringEngine, batcher: Batcher, limits: Limits, name: str) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        return {
            "status": "ok",
            "forward_passes": engine.forward_passes,
            "rows_scored": engine.rows_scored,
            "max_rows_per_forward": engine.max_rows_per_forward,
            "requests_in_flight": request.app.state.requests_in_flight,
            "isolated_batches": batcher.isolated_batches,
        }

    @router.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req, prompts = parse_completion_request(await _json_body(request), limits)
        if req.model is not None and req.model != name:
            msg = f"model {req.model!r} does not exist; this server serves {name!r}"
            raise ApiError(404, msg, param="model")
        try:
            scores = await batcher.score(row_requests(req, prompts))
        except Exception as exc:
            raise ApiError(500, f"scoring failed: {type(exc).__name__}: {exc}") from exc

        def render() -> bytes:  # off the event loop: large responses take a while to build
            body = completion_response(req, prompts, scores, name, engine)
            return json.dumps(body, ensure_ascii=False, allow_nan=False).encode()

        return Response(await asyncio.to_thread(render), media_type="application/json")

    return router


def _tokenizer_routes(engine: ScoringEngine) -> APIRouter:
    router = APIRouter()

    @router.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        body = await _json_body(request)
        text = body.get("prompt") if isinstance(body, dict) else None
        special = body.get("add_special_tokens", True) if isinstance(body, dict) else True
        if not isinstance(text, str) or not isinstance(special, bool):
            raise ApiError(400, "expected {'prompt': <text>, 'add_special_tokens': <bool>}", param="prompt")
        ids = engine.tokenizer(text, add_special_tokens=special)["input_ids"]
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.info.max_model_len}

    @router.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        body = await _json_body(request)
        ids = body.get("tokens") if isinstance(body, dict) else None
        ok = isinstance(ids, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in ids)
        if not ok or not all(0 <= t < engine.info.vocab_size for t in ids):
            msg = f"expected {{'tokens': [ids in [0, {engine.info.vocab_size})]}}"
            raise ApiError(400, msg, param="tokens")
        return {"prompt": engine.decode(ids)}

    return router


def serve(config: ServeConfig) -> None:
    """Load the model and serve it until interrupted (blocking)."""
    import uvicorn

    if config.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        log.warning("listening on %s without an API key: anyone reaching it can use the model", config.host)
    engine = ScoringEngine.from_pretrained(
        config.model, device=config.device, dtype=config.dtype, max_model_len=config.max_model_len
    )
    app = create_app(engine, config)
    name = config.served_model_name or config.model
    print(
        f"opdkit teacher server: {name} on http://{config.host}:{config.port} "
        f"(max_model_len {engine.info.max_model_len}, max_batch_tokens {config.max_batch_tokens}, "
        f"max_body_bytes {config.max_body_bytes}, max_response_logprobs {config.max_response_logprobs}, "
        f"max_concurrent_requests {config.max_concurrent_requests}, "
        f"API key {'required' if config.api_key is not None else 'not required'})",
        flush=True,
    )
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False)
