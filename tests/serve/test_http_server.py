"""``opdkit serve-teacher`` as a real process on 127.0.0.1: vLLM-format log-probs, batching, auth, errors."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from lm_fixtures import SERVER_API_KEY, local_logprobs
from opdkit.teachers.fingerprint import tokenizer_fingerprint

PROMPTS = [
    [1, 4, 5, 6, 7, 8, 9],
    [1, 12],
    [1, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31],
    [1, 40, 41],
    [1, 33, 34, 35, 36],
]


def post(server, body, **kw) -> httpx.Response:
    return httpx.post(server.url + "/v1/completions", json=body, headers=server.headers, timeout=30, **kw)


def check_prompt_logprobs(model, ids: list[int], entries: list, k: int) -> None:
    """Each prompt_logprobs entry equals an unpadded local forward to 1e-5 (vLLM format, §5.1)."""
    logp_L_V = local_logprobs(model, ids)
    assert entries[0] is None and len(entries) == len(ids)
    for j in range(1, len(ids)):
        dist_V = logp_L_V[j - 1]  # logits at j-1 predict token j
        entry = entries[j]
        scored = entry[str(ids[j])]
        assert abs(scored["logprob"] - float(dist_V[ids[j]])) <= 1e-5
        assert scored["rank"] == int((dist_V >= dist_V[ids[j]]).sum())
        top_logp, top_ids = dist_V.topk(k)
        assert set(entry) == {str(ids[j])} | {str(t) for t in top_ids.tolist()}  # k or k+1 keys
        for rank, (tid, lp) in enumerate(zip(top_ids.tolist(), top_logp.tolist()), start=1):
            assert abs(entry[str(tid)]["logprob"] - lp) <= 1e-5
            assert entry[str(tid)]["rank"] == rank


def test_models_card_carries_the_tokenizer_fingerprint(teacher_server, tiny_lm):
    body = httpx.get(teacher_server.url + "/v1/models", headers=teacher_server.headers).json()
    (card,) = body["data"]
    assert card["object"] == "model" and card["max_model_len"] == 128
    assert card["opdkit"]["tokenizer"] == tokenizer_fingerprint(tiny_lm[1])
    assert card["opdkit"]["vocab_size"] == 50


def test_single_prompt_matches_local_forward(teacher_server, tiny_lm):
    ids = PROMPTS[0]
    body = {"prompt": ids, "echo": True, "max_tokens": 1, "logprobs": 3, "temperature": 1.0}
    body["return_tokens_as_token_ids"] = True
    resp = post(teacher_server, body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["object"] == "text_completion" and len(out["choices"]) == 1
    choice = out["choices"][0]
    # echo + logprobs without prompt_logprobs: vLLM sets prompt_logprobs = logprobs
    check_prompt_logprobs(tiny_lm[0], ids, choice["prompt_logprobs"], k=3)
    lps = choice["logprobs"]
    # echo with max_tokens=1: every prompt token then the generated one; the first prompt token has no score
    assert len(lps["tokens"]) == len(ids) + 1 and lps["token_logprobs"][0] is None
    assert lps["tokens"][:-1] == [f"token_id:{t}" for t in ids]
    for j in range(1, len(ids)):
        assert lps["token_logprobs"][j] == choice["prompt_logprobs"][j][str(ids[j])]["logprob"]
        assert len(lps["top_logprobs"][j]) in (3, 4)
    assert out["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1}


def test_batched_request_matches_local_forward(teacher_server, tiny_lm):
    resp = post(teacher_server, {"prompt": PROMPTS, "max_tokens": 0, "prompt_logprobs": 2})
    assert resp.status_code == 200, resp.text
    choices = resp.json()["choices"]
    assert [c["index"] for c in choices] == list(range(len(PROMPTS)))
    for ids, choice in zip(PROMPTS, choices):
        assert choice["logprobs"] is None  # not asked
        check_prompt_logprobs(tiny_lm[0], ids, choice["prompt_logprobs"], k=2)


def test_concurrent_requests_match_local_forward(teacher_server, tiny_lm):
    results: dict[int, httpx.Response] = {}

    def worker(i: int) -> None:
        prompt = PROMPTS[i % len(PROMPTS)] + [i % 40 + 4]
        results[i] = post(teacher_server, {"prompt": prompt, "max_tokens": 0, "prompt_logprobs": 1})

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, resp in results.items():
        assert resp.status_code == 200, resp.text
        prompt = PROMPTS[i % len(PROMPTS)] + [i % 40 + 4]
        check_prompt_logprobs(tiny_lm[0], prompt, resp.json()["choices"][0]["prompt_logprobs"], k=1)
    health = httpx.get(teacher_server.url + "/health", headers=teacher_server.headers).json()
    assert health["rows_scored"] >= 12


def test_echo_semantics(teacher_server, tiny_lm):
    ids = PROMPTS[3]
    # No echo: logprobs cover the generated token only; greedy at temperature 0.
    out = post(teacher_server, {"prompt": ids, "logprobs": 1, "temperature": 0}).json()["choices"][0]
    last_V = local_logprobs(tiny_lm[0], ids)[-1]
    assert out["prompt_logprobs"] is None
    assert out["logprobs"]["token_logprobs"] == [pytest.approx(float(last_V.max()), abs=1e-5)]
    assert out["text"] == tiny_lm[1].decode([int(last_V.argmax())])
    # Echo with max_tokens=0: only the prompt, text included.
    out = post(teacher_server, {"prompt": ids, "echo": True, "max_tokens": 0, "logprobs": 0}).json()
    choice = out["choices"][0]
    assert len(choice["logprobs"]["token_logprobs"]) == len(ids)
    assert choice["text"] == tiny_lm[1].decode(ids)
    assert out["usage"]["completion_tokens"] == 0


def test_api_key_required_on_every_route(teacher_server):
    for method, path in (("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/completions")):
        bare = httpx.request(method, teacher_server.url + path, json={"prompt": [1, 4]})
        wrong = httpx.request(method, teacher_server.url + path, headers={"Authorization": "Bearer nope"})
        assert bare.status_code == 401 and wrong.status_code == 401
        assert "API key" in bare.json()["error"]["message"]
    ok = httpx.post(
        teacher_server.url + "/v1/completions",
        json={"prompt": [1, 4], "max_tokens": 0, "prompt_logprobs": 0},
        headers={"Authorization": f"Bearer {SERVER_API_KEY}"},
    )
    assert ok.status_code == 200


BAD_REQUESTS = [
    (b'{"prompt": [1, 2', 400, "not valid JSON"),
    (b"[1, 2, 3]", 400, "JSON object"),
    (json.dumps({"prompt": "some text"}).encode(), 400, "token ids"),
    (json.dumps({"prompt": [1, 50]}).encode(), 400, "token id 50 is out of range [0, 50)"),
    (json.dumps({"prompt": [1, -3]}).encode(), 400, "out of range"),
    (json.dumps({"prompt": [[1, 4], [1, "a"]]}).encode(), 400, "prompt 1 is not a list of integer token ids"),
    (json.dumps({"prompt": [1, 2.5]}).encode(), 400, "token ids"),
    (json.dumps({"prompt": []}).encode(), 400, "non-empty"),
    (json.dumps({"prompt": [[1, 4], []]}).encode(), 400, "prompt 1 is empty"),
    (
        json.dumps({"prompt": [1] * 128}).encode(),
        400,
        "prompt 0 has 128 tokens; this server accepts at most 127",
    ),
    (json.dumps({"prompt": [1, 4], "logprobs": "x"}).encode(), 400, "logprobs"),
    (json.dumps({"prompt": [1, 4], "logprobs": 21}).encode(), 400, "between 0 and 20"),
    (json.dumps({"prompt": [1, 4], "echo": "yes"}).encode(), 400, "echo"),
    (json.dumps({"prompt": [1, 4], "max_tokens": 16}).encode(), 400, "max_tokens must be 0 or 1"),
    (json.dumps({"prompt": [1, 4], "n": 2}).encode(), 400, "n must be 1"),
    (json.dumps({"prompt": [1, 4], "stream": True}).encode(), 400, "stream"),
    (json.dumps({"prompt": [1, 4], "model": "other"}).encode(), 404, "does not exist"),
    (b'{"prompt": [1, 4], "temperature": NaN}', 400, "temperature must be a finite number"),
    (json.dumps({"prompt": [[1, 4]] * 1025}).encode(), 400, "1025 prompts in one request; at most 1024"),
]


@pytest.mark.parametrize(("raw", "status", "fragment"), BAD_REQUESTS)
def test_invalid_request_gets_4xx_and_server_keeps_serving(teacher_server, raw, status, fragment):
    headers = {**teacher_server.headers, "Content-Type": "application/json"}
    resp = httpx.post(teacher_server.url + "/v1/completions", content=raw, headers=headers)
    assert resp.status_code == status, resp.text
    assert fragment in resp.json()["error"]["message"]
    ok = post(teacher_server, {"prompt": [1, 4, 5], "max_tokens": 0, "prompt_logprobs": 0})
    assert ok.status_code == 200


def test_tokenize_and_detokenize_match_the_tokenizer(teacher_server, tiny_lm):
    text = "1+2=3\nok?"
    got = httpx.post(
        teacher_server.url + "/tokenize",
        json={"prompt": text, "add_special_tokens": False},
        headers=teacher_server.headers,
    ).json()
    assert got["tokens"] == tiny_lm[1](text, add_special_tokens=False)["input_ids"]
    back = httpx.post(
        teacher_server.url + "/detokenize", json={"tokens": got["tokens"]}, headers=teacher_server.headers
    )
    assert back.json()["prompt"] == text


def test_logprob_temperature_extension(teacher_server, tiny_lm):
    ids = PROMPTS[4]
    out = post(
        teacher_server, {"prompt": ids, "max_tokens": 0, "prompt_logprobs": 0, "logprob_temperature": 0.5}
    )
    entries = out.json()["choices"][0]["prompt_logprobs"]
    want = local_logprobs(tiny_lm[0], ids, temperature=0.5)
    for j in range(1, len(ids)):
        assert abs(entries[j][str(ids[j])]["logprob"] - float(want[j - 1, ids[j]])) <= 1e-5
