"""``ServerTeacher`` against a real ``opdkit serve-teacher`` process, directly and through a fault proxy."""

from __future__ import annotations

import math

import pytest
import torch
from fault_proxy import FaultProxy

from lm_fixtures import SERVER_API_KEY, build_tiny_lm, local_logprobs
from opdkit.teachers.base import TEACHERS
from opdkit.teachers.server import ServerTeacher, ServerTeacherConfig, make_server_teacher
from server_process import free_port

PROMPTS = [[1, 4, 5, 6], [1, 7], [1, 8, 9, 10, 11, 12], [1, 13, 14]]
RESPONSES = [[20, 21, 2], [22], [23, 24, 25, 26, 2], []]  # the last row has nothing to score
SENT_ROWS = 3  # rows with a response


@pytest.fixture(scope="module")
def proxy(teacher_server):
    proxy = FaultProxy(teacher_server.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def make_teacher(proxy):
    """Teachers with fast backoff; closed after the test. The proxy starts each test without faults."""
    proxy.set_faults([])
    proxy.hide_opdkit = False
    made = []

    def make(url: str, **options) -> ServerTeacher:
        defaults = dict(
            api_key=SERVER_API_KEY, backoff_s=0.01, backoff_max_s=0.02, seed=0, rows_per_request=4
        )
        teacher = ServerTeacher(ServerTeacherConfig(url=url, **(defaults | options)))
        made.append(teacher)
        return teacher

    yield make
    for teacher in made:
        teacher.close()


def expected(model, prompts, responses, top_k: int = 0, temperature: float = 1.0):
    """Per row: local log-probs of the response tokens (T_i,) and the top-k (T_i, K) of a plain forward."""
    rows = []
    for p, r in zip(prompts, responses):
        logp_L_V = local_logprobs(model, p + r, temperature)[len(p) - 1 : len(p) + len(r) - 1]
        logp_T = logp_L_V.gather(-1, torch.tensor(r, dtype=torch.long)[:, None]).squeeze(-1)
        rows.append((logp_T, *logp_L_V.topk(top_k, dim=-1)) if top_k else (logp_T,))
    return rows


def assert_matches_local(scores, model, prompts=PROMPTS, responses=RESPONSES, top_k=0, temperature=1.0):
    assert scores.valid_N.all() and scores.failed_rows == 0
    for i, want in enumerate(expected(model, prompts, responses, top_k, temperature)):
        n = len(responses[i])
        assert torch.allclose(scores.logp_N_T[i, :n], want[0], atol=1e-5, rtol=0)
        assert (scores.logp_N_T[i, n:] == 0).all()  # padding
        if top_k:
            assert torch.equal(scores.topk_ids_N_T_K[i, :n], want[2])
            assert torch.allclose(scores.topk_logp_N_T_K[i, :n], want[1], atol=1e-5, rtol=0)


def assert_all_sent_rows_failed(scores):
    assert scores.valid_N.tolist() == [False, False, False, True]
    assert torch.isnan(scores.logp_N_T[:SENT_ROWS]).all()  # never zeros (docs/algorithms.md §5.7)
    assert scores.failed_rows == SENT_ROWS and scores.stats["teacher/failed_rows"] == SENT_ROWS


@pytest.mark.parametrize("top_k", [0, 3])
def test_scores_match_a_local_forward(make_teacher, teacher_server, tiny_lm, top_k):
    teacher = make_teacher(teacher_server.url, rows_per_request=2)
    scores = teacher.score(PROMPTS, RESPONSES, top_k=top_k, pad_to=7)
    assert scores.logp_N_T.shape == (4, 7) and scores.logp_N_T.dtype == torch.float32
    assert_matches_local(scores, tiny_lm[0], top_k=top_k)
    if top_k:
        assert scores.topk_ids_N_T_K.shape == (4, 7, 3) and scores.topk_ids_N_T_K.dtype == torch.long
    else:
        assert scores.topk_ids_N_T_K is None
    # 3 rows with a response in requests of 2 rows: 2 requests, nothing retried
    assert scores.stats["teacher/requests"] == 2 and scores.stats["teacher/retries"] == 0


def test_many_requests_in_flight(make_teacher, teacher_server, tiny_lm):
    prompts = [[1, 4 + i % 30, 5 + i % 20] for i in range(16)]
    responses = [[10 + i % 25, 11, 2][: 1 + i % 3] for i in range(16)]
    teacher = make_teacher(teacher_server.url, rows_per_request=1, max_concurrency=8)
    scores = teacher.score(prompts, responses)
    assert_matches_local(scores, tiny_lm[0], prompts, responses)
    assert scores.stats["teacher/requests"] == 16


def test_tokenizer_check_by_fingerprint_and_by_probe(make_teacher, teacher_server, proxy, tiny_lm, tmp_path):
    other = build_tiny_lm(tmp_path / "other", reverse_chars=True)
    from transformers import AutoTokenizer

    other_tokenizer = AutoTokenizer.from_pretrained(other)
    by_metadata = make_teacher(teacher_server.url)
    by_metadata.check_tokenizer(tiny_lm[1])
    with pytest.raises(ValueError, match=r"another tokenizer than the student.*vocab_sha256"):
        by_metadata.check_tokenizer(other_tokenizer)
    proxy.hide_opdkit = True  # looks like a stock vLLM now: no fingerprint, so /tokenize probes
    by_probe = make_teacher(proxy.url)
    by_probe.check_tokenizer(tiny_lm[1])
    assert by_probe.server_info().fingerprint is None
    with pytest.raises(ValueError, match=r"tokenizes .* differently from the student: first difference"):
        by_probe.check_tokenizer(other_tokenizer)
    with pytest.raises(ValueError, match="publishes no tokenizer fingerprint"):
        make_teacher(proxy.url, tokenizer_check="metadata").check_tokenizer(tiny_lm[1])


def test_refused_connection_marks_rows_invalid(make_teacher):
    teacher = make_teacher(f"http://127.0.0.1:{free_port()}", max_retries=2)
    scores = teacher.score(PROMPTS, RESPONSES)
    assert_all_sent_rows_failed(scores)
    # one request of 3 rows, tried 1 + 2 times
    assert scores.stats["teacher/requests"] == 3 and scores.stats["teacher/retries"] == 2
    assert scores.stats["teacher/errors/connect"] == 3
    with pytest.raises(ConnectionError, match="cannot connect"):
        teacher.check_tokenizer(None)


def test_timeout_then_recovery_and_persistent_timeout(make_teacher, proxy, tiny_lm):
    proxy.delay_s = 1.0
    teacher = make_teacher(proxy.url, timeout_s=0.3, max_retries=1)
    proxy.set_faults(["delay"])  # the first try times out, the retry succeeds
    scores = teacher.score(PROMPTS, RESPONSES)
    assert_matches_local(scores, tiny_lm[0])
    assert scores.stats["teacher/retries"] == 1 and scores.stats["teacher/errors/timeout"] == 1
    proxy.set_faults([], then="delay")
    scores = teacher.score(PROMPTS, RESPONSES)
    assert_all_sent_rows_failed(scores)
    assert scores.stats["teacher/errors/timeout"] == 2


FAULTS = {  # fault -> the error counter it raises, per try of the 3-row request
    "500": ("teacher/errors/http_5xx", 1),
    "malformed_json": ("teacher/errors/malformed_response", 1),
    "drop_choice": ("teacher/errors/malformed_response", 1),
    "truncate": ("teacher/errors/malformed_row", SENT_ROWS),
    "extra": ("teacher/errors/malformed_row", SENT_ROWS),
    "shift": ("teacher/errors/malformed_row", SENT_ROWS),
    "nan": ("teacher/errors/malformed_row", SENT_ROWS),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_transient_fault_is_retried(make_teacher, proxy, tiny_lm, fault):
    proxy.set_faults([fault])
    scores = make_teacher(proxy.url, max_retries=2).score(PROMPTS, RESPONSES)
    assert_matches_local(scores, tiny_lm[0])
    key, per_try = FAULTS[fault]
    assert scores.stats[key] == per_try
    assert scores.stats["teacher/retries"] == 1 and scores.stats["teacher/requests"] == 2


@pytest.mark.parametrize("fault", list(FAULTS))
def test_persistent_fault_excludes_and_counts_rows(make_teacher, proxy, fault):
    proxy.set_faults([], then=fault)
    scores = make_teacher(proxy.url, max_retries=2).score(PROMPTS, RESPONSES, top_k=2)
    assert_all_sent_rows_failed(scores)
    assert torch.isnan(scores.topk_logp_N_T_K[:SENT_ROWS]).all()
    key, per_try = FAULTS[fault]
    assert scores.stats[key] == 3 * per_try  # 1 try + 2 retries
    assert scores.stats["teacher/requests"] == 3 and proxy.completions_seen == 3


def test_partly_bad_response_resends_only_the_bad_rows(make_teacher, proxy, tiny_lm):
    proxy.set_faults(["truncate"])
    teacher = make_teacher(proxy.url, rows_per_request=4)
    prompts, responses = PROMPTS[:3], [RESPONSES[0], [22, 23, 24], RESPONSES[2]]
    scores = teacher.score(prompts, responses)  # truncate cuts 2 entries: every row fails the first time
    assert_matches_local(scores, tiny_lm[0], prompts, responses)
    assert scores.stats["teacher/errors/malformed_row"] == 3 and scores.stats["teacher/retries"] == 1


def test_rejected_row_is_isolated(make_teacher, teacher_server, tiny_lm):
    prompts = [PROMPTS[0], [1, 50, 4], PROMPTS[2]]  # id 50 is outside the 50-token vocabulary
    responses = [RESPONSES[0], [5], RESPONSES[2]]
    scores = make_teacher(teacher_server.url).score(prompts, responses)
    assert scores.valid_N.tolist() == [True, False, True]
    assert math.isnan(scores.logp_N_T[1, 0])
    # the 3-row request gets a 400, then each row goes alone: 1 + 3 requests, no retries of a 400
    assert scores.stats["teacher/requests"] == 4 and scores.stats["teacher/retries"] == 0
    assert scores.stats["teacher/errors/http_400"] == 2
    good = expected(tiny_lm[0], [prompts[0]], [responses[0]])[0][0]
    assert torch.allclose(scores.logp_N_T[0, :3], good, atol=1e-5, rtol=0)


def test_too_long_row_is_invalid_without_a_request(make_teacher, teacher_server):
    prompts = [[1] * 100, [1] * 100]
    responses = [[4] * 27, [4] * 28]  # 127 + 1 generated token fits max_model_len 128; 128 + 1 does not
    scores = make_teacher(teacher_server.url).score(prompts, responses)
    assert scores.valid_N.tolist() == [True, False]
    assert scores.stats["teacher/errors/too_long"] == 1 and scores.stats["teacher/requests"] == 1


def test_wrong_api_key(make_teacher, teacher_server, monkeypatch):
    teacher = make_teacher(teacher_server.url, api_key="wrong", rows_per_request=1)
    scores = teacher.score(PROMPTS, RESPONSES)
    assert_all_sent_rows_failed(scores)
    assert scores.stats["teacher/errors/http_401"] == SENT_ROWS and scores.stats["teacher/retries"] == 0
    with pytest.raises(ConnectionError, match="HTTP 401"):
        teacher.check_tokenizer(None)
    assert "wrong" not in repr(teacher.config)
    monkeypatch.setenv("OPDKIT_TEACHER_API_KEY", SERVER_API_KEY)  # the key may come from the environment
    assert make_teacher(teacher_server.url, api_key=None).score(PROMPTS, RESPONSES).failed_rows == 0


def test_logprob_temperature_needs_an_opdkit_server(make_teacher, teacher_server, proxy, tiny_lm):
    scores = make_teacher(teacher_server.url, temperature=0.5).score(PROMPTS, RESPONSES)
    assert_matches_local(scores, tiny_lm[0], temperature=0.5)
    proxy.hide_opdkit = True
    vllm_like = make_teacher(proxy.url, temperature=0.5)
    with pytest.raises(ValueError, match="temperature 1 only"):
        vllm_like.check_tokenizer(tiny_lm[1])
    scores = vllm_like.score(PROMPTS, RESPONSES)
    assert_all_sent_rows_failed(scores)
    assert scores.stats["teacher/errors/unsupported_temperature"] == SENT_ROWS and proxy.completions_seen == 0


def test_backoff_is_exponential_with_jitter():
    a = ServerTeacher(ServerTeacherConfig(backoff_s=0.5, backoff_max_s=8.0, seed=1))
    b = ServerTeacher(ServerTeacherConfig(backoff_s=0.5, backoff_max_s=8.0, seed=1))
    # retry n waits in [d/2, d], d = min(8, 0.5 * 2^(n-1)): n=1 -> [0.25, 0.5], n=3 -> [1, 2], n=6 -> [4, 8]
    for n, (lo, hi) in {1: (0.25, 0.5), 3: (1.0, 2.0), 6: (4.0, 8.0)}.items():
        waits = [a._backoff(n) for _ in range(20)]
        assert all(lo <= w <= hi for w in waits) and len(set(waits)) > 1
        assert waits == [b._backoff(n) for _ in range(20)]  # seeded jitter
    a.close()
    b.close()


def test_registered_factory_validates_options():
    assert TEACHERS.get("server") is make_server_teacher
    with pytest.raises(ValueError, match=r"unknown server teacher option.*'urll'.*valid: api_key"):
        make_server_teacher(urll="http://x")
    with pytest.raises(ValueError, match="must start with http"):
        make_server_teacher(url="localhost:8000")
    with pytest.raises(ValueError, match="tokenizer_check"):
        make_server_teacher(tokenizer_check="maybe")
    with make_server_teacher() as teacher:
        with pytest.raises(ValueError, match=r"pad_to=2 is shorter than the longest response \(3 tokens\)"):
            teacher.score([[1]], [[2, 3, 4]], pad_to=2)
        with pytest.raises(ValueError, match="row 0: empty prompt"):
            teacher.score([[]], [[2]])
