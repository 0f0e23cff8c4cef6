import pytest
import torch
from teacher_forced import teacher_forced_logprobs

from opdkit.models import TinyModelConfig, build_char_tokenizer, build_tiny_model
from opdkit.rollout import SamplingParams, encode_chats, pad_sequences, sample, unpad

TINY = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    m = build_tiny_model(TINY, tok, seed=0)
    # Flatten the output layer so every token, EOS included, has a fair chance (~1/103 a step): some rows then
    # stop early and some are truncated. Logits stay non-uniform (scaled, not zeroed).
    with torch.no_grad():
        m.lm_head.weight.mul_(0.05)
    return m


@pytest.fixture(scope="module")
def prompts(tok):
    chats = [[{"role": "user", "content": q}] for q in ("1+2", "What is 17+25?", "a")]
    return encode_chats(tok, chats)  # three different lengths: left padding is exercised


def test_encode_chats_matches_the_template(tok, prompts):
    assert prompts[0] == tok("<bos><|u|>1+2<|a|>", add_special_tokens=False)["input_ids"]
    assert [len(p) for p in prompts] == [6, 17, 4]


def test_shapes_groups_masks_and_eos(tok, model, prompts):
    params = SamplingParams(n=16, temperature=1.0, max_new_tokens=24)
    out = sample(model, tok, prompts, params, seed=0, first_group_id=10)
    N, P = 3 * 16, 17
    assert out.prompt_ids_N_P.shape == (N, P) and out.prompt_mask_N_P.shape == (N, P)
    L = out.response_ids_N_T.shape[1]
    assert L <= 24 and out.sampler_logp_N_T.shape == out.response_mask_N_T.shape == (N, L)
    assert out.group_ids_N.dtype == torch.int64
    assert out.group_ids_N.tolist() == [10] * 16 + [11] * 16 + [12] * 16  # contiguous groups
    # Left padding: each prompt ends at column P-1; rows of one group share the prompt.
    assert unpad(out.prompt_ids_N_P, out.prompt_mask_N_P)[0] == prompts[0]
    assert unpad(out.prompt_ids_N_P, out.prompt_mask_N_P)[16] == prompts[1]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    n_eos = 0
    for ids, mask, trunc, logp in zip(
        out.response_ids_N_T, out.response_mask_N_T, out.truncated_N, out.sampler_logp_N_T
    ):
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()  # ones, then zeros
        assert (ids[length:] == pad).all() and (logp[length:] == 0).all() and (logp[:length] < 0).all()
        has_eos = bool((ids[:length] == eos).any())
        assert has_eos != bool(trunc)
        if has_eos:
            n_eos += 1
            assert ids[length - 1] == eos and (ids[: length - 1] != eos).all()  # EOS is the last real token
        else:
            assert length == params.max_new_tokens == L  # a truncated row fills every column
    assert 0 < n_eos < N  # both cases occurred (seeded, so this is fixed)
    texts = tok.batch_decode(out.response_lists(), skip_special_tokens=True)
    assert out.texts == texts


def test_seeded_sampling_is_reproducible_and_keeps_global_rng(tok, model, prompts):
    params = SamplingParams(n=4, temperature=0.8, top_p=0.9, top_k=30, max_new_tokens=10)
    torch.manual_seed(99)
    expected_next = torch.rand(3)
    torch.manual_seed(99)
    a = sample(model, tok, prompts, params, seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG did not move
    b = sample(model, tok, prompts, params, seed=7)
    c = sample(model, tok, prompts, params, seed=8)
    assert torch.equal(a.response_ids_N_T, b.response_ids_N_T) and a.texts == b.texts
    assert not torch.equal(a.response_ids_N_T, c.response_ids_N_T)


@pytest.mark.parametrize(("temperature", "top_p", "top_k"), [(1.0, 1.0, 0), (0.6, 0.9, 20), (1.3, 1.0, 5)])
def test_sampler_logprobs_equal_teacher_forced_recomputation(tok, model, prompts, temperature, top_p, top_k):
    params = SamplingParams(n=8, temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=16)
    out = sample(model, tok, prompts, params, seed=1)
    with torch.no_grad():
        recomputed = teacher_forced_logprobs(
            model,
            out.prompt_ids_N_P,
            out.prompt_mask_N_P,
            out.response_ids_N_T,
            out.response_mask_N_T,
            temperature=temperature,
        )
    # log_softmax(raw logits / T) at the chosen token, before top-k/top-p filtering (docs/algorithms.md §0)
    torch.testing.assert_close(recomputed, out.sampler_logp_N_T, atol=1e-4, rtol=1e-4)


def test_the_model_generation_config_does_not_leak_into_sampling(tok, prompts):
    # A checkpoint's own generation defaults (a repetition penalty, top-k) must not alter the distribution
    # that sample() promises, nor be lost after the call.
    from transformers import GenerationConfig

    model = build_tiny_model(TINY, tok, seed=1)
    model.generation_config = GenerationConfig(repetition_penalty=1.5, top_k=3, eos_token_id=tok.eos_token_id)
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=12)
    out = sample(model, tok, prompts, params, seed=0)
    with torch.no_grad():
        recomputed = teacher_forced_logprobs(
            model, out.prompt_ids_N_P, out.prompt_mask_N_P, out.response_ids_N_T, out.response_mask_N_T
        )
    torch.testing.assert_close(recomputed, out.sampler_logp_N_T, atol=1e-4, rtol=1e-4)
    # Untruncated top-k would keep 3 tokens per step: with V = 103 the sampled tokens would then be few.
    assert len(set(out.response_ids_N_T.flatten().tolist())) > 10
    assert model.generation_config.repetition_penalty == 1.5 and model.generation_config.top_k == 3


def test_greedy_decoding_is_deterministic_without_a_seed(tok, model, prompts):
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=8)
    a, b = sample(model, tok, prompts, params), sample(model, tok, prompts, params)
    assert torch.equal(a.response_ids_N_T, b.response_ids_N_T)
    assert torch.equal(a.response_ids_N_T[0], a.response_ids_N_T[1])  # the two members agree when greedy


def test_logprobs_with_left_padding_equal_unpadded_single_row_forwards(tok, model, prompts):
    responses = [[40, 41, 42, tok.eos_token_id], [50], [60, 61]]
    left = pad_sequences(prompts, tok.pad_token_id, side="left")
    right = pad_sequences(responses, tok.pad_token_id, side="right")
    with torch.no_grad():
        batched = teacher_forced_logprobs(
            model, left.ids_N_T, left.mask_N_T, right.ids_N_T, right.mask_N_T, temperature=0.7
        )
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            ids = torch.tensor([prompt + response])
            logits = model(input_ids=ids).logits[0] / 0.7
            # response token t sits at len(prompt)+t and is predicted by the logits one column earlier (§0)
            P = len(prompt)
            expected = torch.log_softmax(logits[P - 1 : P - 1 + len(response)], -1)
            expected = expected.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
            torch.testing.assert_close(batched[i, : len(response)], expected, atol=1e-5, rtol=1e-5)
            assert (batched[i, len(response) :] == 0).all()


def test_logprobs_carry_gradients(tok, model, prompts):
    left = pad_sequences(prompts, tok.pad_token_id, side="left")
    right = pad_sequences([[40, 41]] * 3, tok.pad_token_id, side="right")
    logp = teacher_forced_logprobs(model, left.ids_N_T, left.mask_N_T, right.ids_N_T, right.mask_N_T)
    logp.sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        SamplingParams(n=0)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="side"):
        pad_sequences([[1]], 0, side="middle")


@pytest.mark.parametrize(("temperature", "top_p", "top_k"), [(1.0, 1.0, 0), (0.7, 0.9, 20), (0.0, 1.0, 0)])
def test_prefilling_each_prompt_once_samples_the_same_tokens(tok, model, prompts, temperature, top_p, top_k):
    # The G copies of a prompt share one prefill (its cache is repeated for them); with the same seed the
    # tokens and the sampler's log-probs are those of generate prefilling every copy.
    params = SamplingParams(n=6, temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=12)
    shared = sample(model, tok, prompts, params, seed=5)
    full = sample(model, tok, prompts, params, seed=5, share_prompts=False)
    assert torch.equal(shared.response_ids_N_T, full.response_ids_N_T) and shared.texts == full.texts
    assert torch.equal(shared.response_mask_N_T, full.response_mask_N_T)
    torch.testing.assert_close(shared.sampler_logp_N_T, full.sampler_logp_N_T, atol=1e-5, rtol=1e-5)


def test_one_token_prompts_and_single_samples_are_prefilled_by_generate(tok, model, prompts):
    for prompt_ids, n in (([[tok.bos_token_id], *prompts], 3), (prompts, 1)):
        params = SamplingParams(n=n, temperature=1.0, max_new_tokens=6)
        shared = sample(model, tok, prompt_ids, params, seed=2)
        full = sample(model, tok, prompt_ids, params, seed=2, share_prompts=False)
        assert torch.equal(shared.response_ids_N_T, full.response_ids_N_T)


def test_sampling_without_logprobs_records_none_and_samples_the_same(tok, model, prompts):
    with_logp = sample(model, tok, prompts, SamplingParams(n=4, max_new_tokens=8), seed=3)
    without = sample(model, tok, prompts, SamplingParams(n=4, max_new_tokens=8, logprobs=False), seed=3)
    assert without.sampler_logp_N_T is None
    assert torch.equal(with_logp.response_ids_N_T, without.response_ids_N_T)
