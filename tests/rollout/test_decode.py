"""``rollout.decode``: with ``generate``'s token draw the lean loop samples exactly the tokens ``generate``
samples; with its own (inverse CDF) it samples from the same distribution."""

from __future__ import annotations

import pytest
import torch
from teacher_forced import teacher_forced_logprobs

from opdkit.models import TinyModelConfig, build_char_tokenizer, build_tiny_model
from opdkit.rollout import SamplingParams, encode_chats, sample
from opdkit.rollout.decode import multinomial_draw


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    m = build_tiny_model(
        TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128), tok
    )
    with torch.no_grad():
        m.lm_head.weight.mul_(0.05)  # flatter output: some rows hit EOS early, others run to the limit
    return m


@pytest.fixture(scope="module")
def prompts(tok):
    questions = ("1+2", "What is 17+25?", "a")  # three lengths: left padding
    return encode_chats(tok, [[{"role": "user", "content": q}] for q in questions])


SETTINGS = [  # (temperature, top_p, top_k): plain sampling, every warper, greedy
    (1.0, 1.0, 0),
    (0.7, 0.9, 20),
    (1.3, 1.0, 5),
    (0.0, 1.0, 0),
]


@pytest.mark.parametrize(("temperature", "top_p", "top_k"), SETTINGS)
@pytest.mark.parametrize("share", [True, False])
def test_the_lean_loop_samples_what_generate_samples(tok, model, prompts, temperature, top_p, top_k, share):
    params = SamplingParams(n=6, temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=20)
    lean = sample(model, tok, prompts, params, seed=5, share_prompts=share, draw=multinomial_draw)
    hf = sample(model, tok, prompts, params, seed=5, share_prompts=share, use_generate=True)
    assert torch.equal(lean.response_ids_N_T, hf.response_ids_N_T) and lean.texts == hf.texts
    assert torch.equal(lean.response_mask_N_T, hf.response_mask_N_T)
    assert torch.equal(lean.truncated_N, hf.truncated_N)
    torch.testing.assert_close(lean.sampler_logp_N_T, hf.sampler_logp_N_T, atol=1e-6, rtol=1e-6)


def test_runs_stop_early_when_every_row_has_ended(tok, model, prompts):
    # seed 5 at T = 1 (checked above to equal generate): some rows end with EOS and the others are
    # truncated, so the response width is the limit; when every row ends early the loop stops there too.
    params = SamplingParams(n=6, temperature=1.0, max_new_tokens=20)
    out = sample(model, tok, prompts, params, seed=5, draw=multinomial_draw)
    assert out.truncated_N.any() and not out.truncated_N.all() and out.response_ids_N_T.shape[1] == 20
    # With two rows and room for 300 tokens both rows meet an EOS (p ~ 1/103 a step), and the loop stops at
    # the later one, as generate does.
    long = SamplingParams(n=2, temperature=1.0, max_new_tokens=300)
    ended = sample(model, tok, prompts[:1], long, seed=0, draw=multinomial_draw)
    hf = sample(model, tok, prompts[:1], long, seed=0, use_generate=True)
    assert not ended.truncated_N.any() and ended.response_ids_N_T.shape[1] < 300
    assert ended.response_ids_N_T.shape[1] == int(ended.response_mask_N_T.sum(-1).max())
    assert torch.equal(ended.response_ids_N_T, hf.response_ids_N_T)


@pytest.mark.parametrize(("temperature", "top_p", "top_k"), [(1.0, 1.0, 0), (0.7, 0.8, 10)])
def test_the_default_draw_samples_the_warped_distribution(tok, model, prompts, temperature, top_p, top_k):
    # First tokens of 6,000 samples of one prompt against the probabilities generate samples from: Hugging
    # Face's warpers on the prompt's last logits, then softmax; every frequency within 4.5 binomial sigmas.
    from opdkit.rollout.decode import _warpers

    n = 6000
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=1)
    first_N = sample(model, tok, prompts[1:2], params, seed=0).response_ids_N_T[:, 0]
    with torch.no_grad():
        logits_1_V = model(torch.tensor([prompts[1]])).logits[:, -1].float()
    scores_1_V = logits_1_V
    for warp in _warpers(temperature, top_k, top_p):
        scores_1_V = warp(None, scores_1_V)
    probs_V = torch.softmax(scores_1_V, -1)[0].double()
    counts_V = torch.bincount(first_N, minlength=probs_V.numel()).double()
    assert (counts_V[probs_V == 0] == 0).all()  # nothing outside the top-k / top-p set
    sigma_V = (n * probs_V * (1 - probs_V)).sqrt()
    assert ((counts_V - n * probs_V).abs() <= 4.5 * sigma_V + 1e-9).all()


def test_unpadded_prompts_need_no_mask_and_match_generate(tok, model):
    same_length = encode_chats(tok, [[{"role": "user", "content": q}] for q in ("12+3", "4+56", "7+89")])
    assert len({len(p) for p in same_length}) == 1
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=10)
    lean = sample(model, tok, same_length, params, seed=1, draw=multinomial_draw)
    hf = sample(model, tok, same_length, params, seed=1, use_generate=True)
    assert torch.equal(lean.response_ids_N_T, hf.response_ids_N_T)
    torch.testing.assert_close(lean.sampler_logp_N_T, hf.sampler_logp_N_T, atol=1e-6, rtol=1e-6)


def test_its_outputs_can_enter_a_training_forward(tok, model, prompts):
    # The loop runs in inference mode; its outputs must still be usable where autograd saves them.
    out = sample(model, tok, prompts, SamplingParams(n=2, max_new_tokens=6), seed=0)
    assert not out.response_ids_N_T.is_inference() and not out.sampler_logp_N_T.is_inference()
    logp_N_T = teacher_forced_logprobs(
        model, out.prompt_ids_N_P, out.prompt_mask_N_P, out.response_ids_N_T, out.response_mask_N_T
    )
    (logp_N_T * out.response_mask_N_T).sum().backward()
    assert model.lm_head.weight.grad is not None
    model.zero_grad()
