import pytest
import torch

from opdkit.core.registry import UnknownNameError
from opdkit.models import (
    TinyModelConfig,
    build_char_tokenizer,
    build_tiny_model,
    load_pretrained,
    save_pretrained_atomic,
)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_build_sizes_and_special_ids(tok, family):
    model = build_tiny_model(TinyModelConfig(family=family), tok, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    # 2 layers x (4 * 128^2 attention + 3 * 128 * 512 MLP) = 524288, + 103 x 128 tied embeddings + norms;
    # qwen2 adds q/k/v biases. Measured: 0.4-0.55 M.
    assert 0.52e6 < n_params < 0.55e6
    assert model.config.vocab_size == len(tok)
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone(tok):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_model(TinyModelConfig(hidden_size=64, intermediate_size=128), tok, seed=5)
    after = torch.rand(1)
    b = build_tiny_model(TinyModelConfig(hidden_size=64, intermediate_size=128), tok, seed=5)
    c = build_tiny_model(TinyModelConfig(hidden_size=64, intermediate_size=128), tok, seed=6)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_initializer_range_is_the_std_of_the_initial_weights(tok):
    for std in (0.02, 0.1):
        model = build_tiny_model(TinyModelConfig(initializer_range=std), tok, seed=0)
        q_proj = model.model.layers[0].self_attn.q_proj.weight.detach()  # 128 x 128 = 16384 N(0, std^2) draws
        # the sample std of 16384 normal draws is within 1 % of std with overwhelming probability (se 0.55 %)
        assert float(q_proj.std()) == pytest.approx(std, rel=0.03)


def test_bad_configs_are_refused(tok):
    with pytest.raises(UnknownNameError, match="llama, qwen2"):
        build_tiny_model(TinyModelConfig(family="gpt9"), tok)
    with pytest.raises(ValueError, match="divisible"):
        build_tiny_model(TinyModelConfig(hidden_size=130, num_heads=4), tok)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_save_load_round_trip_gives_identical_logits(tok, tmp_path, family):
    from transformers import AutoModelForCausalLM

    model = build_tiny_model(
        TinyModelConfig(family=family, num_layers=1, hidden_size=64, intermediate_size=128), tok
    )
    path = save_pretrained_atomic(model, tok, tmp_path / "m")
    loaded = load_pretrained(path)
    ids = torch.tensor(
        [
            tok.apply_chat_template([{"role": "user", "content": "12+34"}], add_generation_prompt=True)[
                "input_ids"
            ]
        ]
    )
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded.model(input_ids=ids).logits)
    assert (
        loaded.tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
        == "<bos><|u|>x"
    )
    # The plain Hugging Face loader reads the same folder.
    auto = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    assert type(auto).__name__ == type(model).__name__
    assert loaded.model.generation_config.eos_token_id == tok.eos_token_id


def test_atomic_save_replaces_and_leaves_no_temp_folders(tok, tmp_path):
    small = TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)
    save_pretrained_atomic(build_tiny_model(small, tok, seed=0), tok, tmp_path / "m")
    second = build_tiny_model(small, tok, seed=1)
    save_pretrained_atomic(second, tok, tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    reloaded = load_pretrained(tmp_path / "m").model
    assert all(torch.equal(p, q) for p, q in zip(second.parameters(), reloaded.parameters()))


def test_load_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_pretrained(tmp_path)
