"""``rollout.kvcache``: the cache ``sample`` gives ``generate`` changes no token and no key/value."""

from __future__ import annotations

import pytest
import torch

from opdkit.models import TinyModelConfig, build_char_tokenizer, build_tiny_model
from opdkit.rollout import encode_chats, pad_sequences
from opdkit.rollout.kvcache import generation_cache, is_plain_cache, preallocate


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


N_SAMPLES, MAX_NEW = 6, 20


def _generate(model, tok, prompts, seed, cache, **sampling):
    from transformers import GenerationConfig

    padded = pad_sequences(prompts, tok.pad_token_id, side="left")
    config = GenerationConfig(
        max_new_tokens=MAX_NEW, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **sampling
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        extra = {} if cache is None else {"past_key_values": cache(padded)}
        return model.generate(
            input_ids=padded.ids_N_T.repeat_interleave(N_SAMPLES, 0),
            attention_mask=padded.mask_N_T.repeat_interleave(N_SAMPLES, 0),
            generation_config=config,
            **extra,
        )


@pytest.mark.parametrize("sampling", [{"do_sample": True, "temperature": 1.0}, {"do_sample": False}])
@pytest.mark.parametrize("share", [True, False])
def test_generate_with_the_cache_equals_generate_alone(tok, model, sampling, share):
    prompts = encode_chats(tok, [[{"role": "user", "content": q}] for q in ("1+2", "What is 17+25?", "a")])
    expected = _generate(model, tok, prompts, 5, None, **sampling)
    with torch.no_grad():
        cache = lambda p: generation_cache(model, p, N_SAMPLES, MAX_NEW, share=share)  # noqa: E731
        got = _generate(model, tok, prompts, 5, cache, **sampling)
    assert torch.equal(got, expected)
    if sampling["do_sample"]:  # (seed 5) a row stops at EOS, then pads; the others run to the limit
        assert (got == tok.eos_token_id).any() and got.shape[1] == 17 + MAX_NEW


def test_preallocated_layers_hold_what_concatenation_holds():
    from transformers.cache_utils import DynamicCache, DynamicLayer

    torch.manual_seed(0)
    steps = [torch.randn(3, 2, k, 4) for k in (5, 1, 1, 3, 1, 1)]  # a prefill, then appends past capacity
    plain, fast = DynamicCache(), DynamicCache()
    plain.layers, fast.layers = [DynamicLayer()], [DynamicLayer()]
    fast = preallocate(fast, capacity=7)
    for i, kv in enumerate(steps):
        want = plain.layers[0].update(kv, -kv)
        got = fast.layers[0].update(kv, -kv)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        if i == 3:  # a cache edited from outside (as crop or reorder do) is taken over, not overwritten
            for c in (plain, fast):
                c.batch_select_indices(torch.tensor([2, 0, 1]))
    assert fast.get_seq_length() == plain.get_seq_length() == 12
    filled = DynamicCache()
    filled.layers = [DynamicLayer()]
    filled.layers[0].update(steps[0], steps[0])
    moved = preallocate(filled, capacity=6)  # a filled cache keeps its contents
    assert torch.equal(moved.layers[0].keys, steps[0]) and moved.get_seq_length() == 5


def test_models_without_a_plain_cache_get_generate_s_own(tok):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, use_sliding_window=True, sliding_window=3, max_window_layers=0,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).eval()
    padded = pad_sequences([[1, 8, 9, 10], [1, 11, 12]], tok.pad_token_id, side="left")
    with torch.no_grad():
        assert generation_cache(model, padded, 4, 8, share=True) is None
        assert generation_cache(model, padded, 4, 8, share=False) is None
    from transformers.cache_utils import DynamicCache

    assert not is_plain_cache(DynamicCache(config=config))


def test_a_whole_prefill_gives_every_sample_the_prompt_s_last_logits(tok, model):
    from opdkit.rollout.kvcache import decode_prefill

    prompts = [[1, 8, 9, 10], [1, 11], [1]]  # left padding, and a one-token prompt
    padded = pad_sequences(prompts, tok.pad_token_id, side="left")
    with torch.no_grad():
        prefill = decode_prefill(model, padded, 3, 5, share=True)
        assert prefill.cache.get_seq_length() == 4 and prefill.last_logits_N_V.shape == (9, len(tok))
        for i, ids in enumerate(prompts):  # each prompt alone, unpadded
            want_V = model(torch.tensor([ids])).logits[0, -1].float()
            for row in range(3 * i, 3 * i + 3):
                torch.testing.assert_close(prefill.last_logits_N_V[row], want_V, atol=1e-5, rtol=1e-5)
        unshared = decode_prefill(model, padded, 3, 5, share=False)
        assert unshared.cache.get_seq_length() == 0 and unshared.last_logits_N_V is None
