"""Sampling and evaluation in chunks under a key/value-cache budget give the samples of one piece.

The inverse-CDF draws of every row come from one table drawn before the chunks run (``rollout.chunks``), so
which rows share a cache changes nothing but memory.
"""

from __future__ import annotations

import pytest
import torch

from opdkit.data import Example
from opdkit.eval import EvalSettings, evaluate
from opdkit.models import TinyModelConfig, build_char_tokenizer, build_tiny_model
from opdkit.rollout import SamplingParams, encode_chats, sample
from opdkit.rollout.chunks import prompt_chunks

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    m = build_tiny_model(TINY, tok, seed=3)
    with torch.no_grad():
        m.lm_head.weight.mul_(0.05)  # EOS gets a fair chance: rows of different lengths in every chunk
    return m


@pytest.fixture(scope="module")
def prompts(tok):
    questions = ("1+2", "What is 17+25?", "a", "sort 3 1 2", "99-1")
    return encode_chats(tok, [[{"role": "user", "content": q}] for q in questions])


def test_prompt_chunks_fit_the_budget():
    # 5 prompts of n·W = 4·(17 + 24) = 164 cache tokens each: a budget of 400 holds ⌊400/164⌋ = 2 prompts
    assert prompt_chunks(5, 164, 400) == [(0, 2), (2, 4), (4, 5)]
    assert prompt_chunks(5, 164, 0) == [(0, 5)]  # no budget: one piece
    assert prompt_chunks(5, 164, 10) == [(i, i + 1) for i in range(5)]  # never fewer than one prompt
    assert prompt_chunks(0, 164, 400) == []


@pytest.mark.parametrize("budget", [1, 2 * 4 * (17 + 24), 3 * 4 * (17 + 24)])  # 1, 2 and 3 prompts a chunk
@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_chunked_sampling_gives_the_unchunked_samples(tok, model, prompts, budget, temperature, top_p):
    params = SamplingParams(n=4, temperature=temperature, top_p=top_p, max_new_tokens=24)
    whole = sample(model, tok, prompts, params, seed=11, first_group_id=3)
    chunked = sample(
        model, tok, prompts, SamplingParams(**{**params.__dict__, "max_cache_tokens": budget}), seed=11,
        first_group_id=3,
    )  # fmt: skip
    assert not bool(whole.truncated_N.all()) and bool(whole.truncated_N.any())  # both kinds of rows
    assert torch.equal(chunked.response_ids_N_T, whole.response_ids_N_T)
    assert torch.equal(chunked.response_mask_N_T, whole.response_mask_N_T)
    assert torch.equal(chunked.prompt_ids_N_P, whole.prompt_ids_N_P)
    assert torch.equal(chunked.group_ids_N, whole.group_ids_N)
    assert chunked.texts == whole.texts
    torch.testing.assert_close(chunked.sampler_logp_N_T, whole.sampler_logp_N_T, atol=1e-5, rtol=1e-5)


def test_another_seed_gives_other_samples(tok, model, prompts):
    """The test above could pass with a draw that ignores its numbers; this one could not."""
    params = SamplingParams(n=4, max_new_tokens=24, max_cache_tokens=1)
    a, b = (sample(model, tok, prompts, params, seed=s).response_ids_N_T for s in (11, 12))
    assert a.shape != b.shape or not torch.equal(a, b)


def test_chunked_evaluation_gives_the_unchunked_records(tok, model):
    examples = [
        Example(problem_id=f"q{i}", data_source="toy", prompt=[{"role": "user", "content": f"{i}+{i}="}],
                ground_truth=str(2 * i), verifier="addition/boxed")
        for i in range(5)
    ]  # fmt: skip
    settings = EvalSettings(k=3, max_new_tokens=12, prompts_per_batch=4, seed=5)
    whole = evaluate(model, tok, examples, settings)
    chunked = evaluate(model, tok, examples, EvalSettings(**{**settings.__dict__, "max_cache_tokens": 40}))
    assert chunked.records == whole.records
    assert len(whole.records) == 15


def test_the_default_cache_budget_is_half_the_free_memory_in_cache_tokens(model, monkeypatch):
    import opdkit.rollout.budget as budget

    # TINY: 2 layers, 2 key/value heads (no GQA), head_dim 32 / 2 = 16 -> 2 · 2 · 2 · 16 · 2 B = 256 B a token
    # in bfloat16; half of 1 MiB free = 524,288 B -> 2048 tokens
    monkeypatch.setattr(budget, "free_device_bytes", lambda device: 1 << 20)
    assert budget.cache_token_budget(model, 0, torch.bfloat16) == 2048
    assert budget.cache_token_budget(model, 0, torch.float32) == 1024  # 512 B a token
    assert budget.cache_token_budget(model, 300, torch.bfloat16) == 300  # configured: taken as it is
    monkeypatch.setattr(budget, "free_device_bytes", lambda device: 0)
    assert budget.cache_token_budget(model, 0, torch.bfloat16) == 0  # unknown free memory: no limit
