"""One teacher-server client cannot fail the others or exhaust the server (a real ``opdkit serve-teacher``).

Before: ``temperature: 1e-300``, ``logprob_temperature: 1e-300`` or ``seed: 2**64`` were accepted and made the
whole batched forward fail, so concurrent good requests got HTTP 500; bodies, responses and concurrency had
no limit (a 0.46 MB request produced a 303 MB response); ``--api-key ""`` said "not required" yet answered
401. The server here runs with small caps so each limit is reached with small requests.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from opdkit.serve import ServeConfig
from opdkit.serve.batcher import Batcher
from opdkit.serve.engine import RowRequest, ScoringEngine
from opdkit.teachers.server import ServerTeacher, ServerTeacherConfig
from server_process import start_server, stop_server

MAX_BODY = 20_000
MAX_ENTRIES = 5_000
MAX_IN_FLIGHT = 24
GOOD = {"prompt": [1, 4, 5, 6, 7], "max_tokens": 1, "logprobs": 2, "echo": True, "temperature": 1.0}


@pytest.fixture(scope="module")
def capped_server(tiny_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    log_path = tmp_path_factory.mktemp("capped_server") / "server.log"
    server = start_server(
        tiny_lm_dir,
        log_path,
        "--max-batch-tokens", "256",
        "--max-body-bytes", str(MAX_BODY),
        "--max-response-logprobs", str(MAX_ENTRIES),
        "--max-concurrent-requests", str(MAX_IN_FLIGHT),
    )  # fmt: skip
    yield server
    stop_server(server)


def post(server, body: dict | None = None, **kw) -> httpx.Response:
    kw.setdefault("json", body)
    return httpx.post(server.url + "/v1/completions", timeout=60, **kw)


@pytest.mark.timeout(120)
def test_bad_requests_among_concurrent_good_ones_fail_alone(capped_server):
    bad = [
        {**GOOD, "temperature": 1e-300, "seed": 2**64},
        {**GOOD, "logprob_temperature": 1e-300},
        {**GOOD, "seed": 2**64},
    ]
    bodies = [GOOD] * 20 + bad  # 23 requests in flight at once, under the cap of 24
    start = threading.Barrier(len(bodies))

    def send(body: dict) -> httpx.Response:
        start.wait()
        return post(capped_server, body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(send, bodies))
    assert [r.status_code for r in responses] == [200] * 20 + [400] * 3, [r.text[:200] for r in responses]
    assert [r.json()["error"]["param"] for r in responses[20:]] == [
        "temperature",
        "logprob_temperature",
        "seed",
    ]
    scored = {json.dumps(r.json()["choices"][0]["logprobs"]["token_logprobs"][:5]) for r in responses[:20]}
    assert len(scored) == 1  # the echoed prompt's log-probs are the same in every good response


FIELD_ERRORS = [
    ({"temperature": 1e-300}, "temperature", "0 (greedy) or in [0.001, 1000]"),
    ({"temperature": 1e9}, "temperature", "got 1000000000.0"),
    ({"logprob_temperature": 1e-300}, "logprob_temperature", "in [0.001, 1000]"),
    ({"logprob_temperature": 0}, "logprob_temperature", "in [0.001, 1000]"),
    ({"seed": 2**64}, "seed", "[-2**63, 2**64 - 1]"),
    ({"seed": -(2**63) - 1}, "seed", "[-2**63, 2**64 - 1]"),
    ({"logprobs": 10**20}, "logprobs", "between 0 and 20"),
    ({"prompt_logprobs": -1}, "prompt_logprobs", "between 0 and 20"),
    ({"max_tokens": 10**20}, "max_tokens", "0 or 1"),
    ({"prompt": [1, 10**20]}, "prompt", "out of range [0, 50)"),
]


@pytest.mark.parametrize(("fields", "param", "fragment"), FIELD_ERRORS)
def test_every_numeric_field_is_range_checked_with_a_400_naming_it(capped_server, fields, param, fragment):
    resp = post(capped_server, {**GOOD, **fields})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and fragment in error["message"]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ('{"prompt": [1, ' + "7" * 5000 + "]}", "Exceeds the limit (4300 digits)"),
        ('{"prompt": ' + "[" * 5000 + "]" * 5000 + "}", "not valid JSON"),
    ],
    ids=["5000-digit-int", "5000-deep"],
)
def test_unreadable_json_is_a_400_not_a_500(capped_server, raw, fragment):
    resp = post(capped_server, None, content=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert "not valid JSON" in resp.json()["error"]["message"] and fragment in resp.text


def test_a_body_over_the_cap_is_a_413_with_or_without_a_length(capped_server):
    big = json.dumps({"prompt": [[1, 4, 5]] * 3000}).encode()  # 36,000 bytes > 20,000
    declared = post(capped_server, None, content=big, headers={"Content-Type": "application/json"})
    chunked = post(capped_server, None, content=iter([big[:15_000], big[15_000:]]))  # no Content-Length
    for resp in (declared, chunked):
        assert resp.status_code == 413, resp.text
        assert "over 20,000 bytes" in resp.json()["error"]["message"] and "--max-body-bytes" in resp.text
    assert post(capped_server, GOOD).status_code == 200


def test_a_response_over_the_log_prob_cap_is_a_413_before_any_forward(capped_server):
    # 10 prompts of 100 tokens with prompt_logprobs=20: 10 * (100 + 1) * (20 + 1) = 21,210 entries > 5,000.
    body = {"prompt": [[1] + [4] * 99] * 10, "max_tokens": 0, "prompt_logprobs": 20}
    before = httpx.get(capped_server.url + "/health").json()["forward_passes"]
    resp = post(capped_server, body)
    assert resp.status_code == 413, resp.text
    message = resp.json()["error"]["message"]
    assert "21,210 log-prob entries (10 prompts, 1,000 tokens" in message
    assert "at most 5,000 per request (--max-response-logprobs; one prompt is always accepted)" in message
    assert httpx.get(capped_server.url + "/health").json()["forward_passes"] == before
    # 2 prompts: 2 * 101 * 21 = 4,242 entries, under the cap.
    assert post(capped_server, {**body, "prompt": body["prompt"][:2]}).status_code == 200
    # One prompt always passes (its size is bounded by max_model_len and max_logprobs), so a client that
    # splits a refused request row by row gets through: 1 * (127 + 1) * (21 + 21) = 5,376 entries > 5,000.
    one = {"prompt": [1] + [4] * 126, "max_tokens": 1, "echo": True, "logprobs": 20, "prompt_logprobs": 20}
    assert post(capped_server, one).status_code == 200


@pytest.mark.timeout(120)
def test_requests_beyond_the_concurrency_cap_get_429_with_retry_after(capped_server):
    release = threading.Event()
    payload = json.dumps(GOOD).encode()

    def slow_body():  # the request stays in flight until release is set
        yield payload[:10]
        release.wait(60)
        yield payload[10:]

    def in_flight() -> int:
        return httpx.get(capped_server.url + "/health", timeout=10).json()["requests_in_flight"]

    with ThreadPoolExecutor(MAX_IN_FLIGHT) as pool:
        held = [pool.submit(post, capped_server, None, content=slow_body()) for _ in range(MAX_IN_FLIGHT)]
        deadline = time.monotonic() + 60
        while in_flight() < MAX_IN_FLIGHT and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = post(capped_server, GOOD)  # GETs (/health above) are never refused
        release.set()
        statuses = [f.result().status_code for f in held]
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] == "1"
    assert "24 requests are already in flight" in refused.json()["error"]["message"]
    assert statuses == [200] * MAX_IN_FLIGHT  # the held requests are served once their bodies arrive
    assert in_flight() == 0 and post(capped_server, GOOD).status_code == 200


@pytest.mark.slow  # its own server process (before the fix: 90 s until start_server gave up on the 401s)
@pytest.mark.timeout(150)
def test_an_empty_api_key_means_no_key(tiny_lm_dir: Path, tmp_path: Path):
    assert ServeConfig("m", api_key="").api_key is None
    server = start_server(tiny_lm_dir, tmp_path / "server.log", "--api-key", "")
    try:
        assert post(server, GOOD).status_code == 200  # no Authorization header needed
        assert "API key not required" in server.log_path.read_text()
    finally:
        stop_server(server)


@pytest.mark.timeout(60)
def test_a_row_that_fails_the_batched_forward_is_retried_alone(tiny_lm):
    model, tokenizer = tiny_lm
    engine = ScoringEngine(model, tokenizer)
    good = RowRequest(ids=(1, 4, 5, 6), top_k=2, generate=True, temperature=0)
    # Rows the HTTP layer now refuses, sent to the engine directly: both fail inside the forward.
    overflow = RowRequest(
        ids=(1, 7), generate=True, temperature=1e-300
    )  # logits / 1e-300 -> inf -> NaN probs
    bad_seed = RowRequest(ids=(1, 8), generate=True, seed=2**64)  # torch refuses seeds >= 2**64

    async def scenario():
        batcher = Batcher(engine, max_batch_tokens=256)
        calls = [asyncio.ensure_future(batcher.score([row])) for row in (good, overflow, good, bad_seed)]
        await asyncio.sleep(0)  # every request is queued before the loop forms its first batch
        runner = asyncio.ensure_future(batcher.run())
        results = await asyncio.gather(*calls, return_exceptions=True)
        runner.cancel()
        batcher.close()
        return results, batcher.isolated_batches

    (first, err1, second, err2), isolated = asyncio.run(scenario())
    assert isinstance(err1, RuntimeError | ValueError) and isinstance(err2, ValueError)
    assert first[0] == second[0] == engine.score_rows([good])[0]  # the good rows are scored as if alone
    assert isolated == 1 and engine.max_rows_per_forward == 4  # one batch of 4 failed, then row by row


def test_the_training_client_gets_through_the_response_cap_row_by_row(capped_server):
    prompts = [[1, 4, 5, 6]] * 4
    responses = [[7 + i % 30 for i in range(96)]] * 4  # 100-token rows
    config = ServerTeacherConfig(url=capped_server.url, backoff_s=0.01, backoff_max_s=0.02)
    teacher = ServerTeacher(config)
    try:
        scores = teacher.score(prompts, responses, top_k=20)
    finally:
        teacher.close()
    # 4 rows of 100 tokens with prompt_logprobs = logprobs = 20: 4 * 101 * 42 = 16,968 entries > 5,000 -> 413;
    # then each row alone: 101 * 42 = 4,242 entries -> 200. 1 + 4 requests (4 rows per request by
    # default), every row scored.
    assert scores.valid_N.all() and scores.failed_rows == 0
    assert scores.stats["teacher/requests"] == 5 and scores.stats["teacher/errors/http_413"] == 1
