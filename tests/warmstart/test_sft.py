import pytest
import torch

from opdkit.models import TinyModelConfig, build_char_tokenizer, build_tiny_model
from opdkit.warmstart.sft import SftExample, collate, sft_step, summed_loss

TINY = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def test_collate_labels_only_the_target(tok):
    batch = collate([SftExample((1, 5, 40), (41, 2)), SftExample((1, 40), (42, 43, 2))], pad_id=0)
    # row 0: prompt 3 + target 2 = 5 columns; row 1: 2 + 3 = 5; nothing to pad
    assert batch.ids_N_T.tolist() == [[1, 5, 40, 41, 2], [1, 40, 42, 43, 2]]
    assert batch.labels_N_T.tolist() == [[-100, -100, -100, 41, 2], [-100, -100, 42, 43, 2]]
    assert batch.num_target_tokens == 5
    short = collate([SftExample((1,), (2,)), SftExample((1, 40, 41), (42, 2))], pad_id=0)
    assert short.mask_N_T.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert short.labels_N_T[0].tolist() == [-100, 2, -100, -100, -100]


def test_summed_loss_matches_a_hand_computed_cross_entropy(tok):
    model = build_tiny_model(TINY, tok, seed=0)
    ex = SftExample((1, 5, 40), (41, 2))
    with torch.no_grad():
        got = summed_loss(model, collate([ex], 0))
        logits = model(input_ids=torch.tensor([[1, 5, 40, 41, 2]])).logits[0]
        logp = torch.log_softmax(logits, -1)
        # target token 41 sits at column 3 and is predicted by column 2; EOS (2) at column 4 by column 3
        expected = -(logp[2, 41] + logp[3, 2])
    torch.testing.assert_close(got, expected)


def test_micro_batches_give_the_same_step_as_one_mixed_batch(tok):
    examples = [
        SftExample((1, 5, 40), (41, 2)),
        SftExample((1, 5, 40, 50, 51, 52, 53, 6), (42, 43, 2)),
        SftExample((1, 5, 44), (45, 46, 2)),
    ]
    a, b = build_tiny_model(TINY, tok, seed=0), build_tiny_model(TINY, tok, seed=0)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    loss_a = sft_step(a, opt_a, [collate(examples, 0)])
    loss_b = sft_step(b, opt_b, [collate(examples[::2], 0), collate(examples[1:2], 0)])
    assert loss_a == pytest.approx(loss_b, rel=1e-5)  # padding after a row's end changes nothing (causal)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_a_non_finite_loss_skips_the_update(tok):
    model = build_tiny_model(TINY, tok, seed=0)
    with torch.no_grad():
        model.model.norm.weight[0] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    loss = sft_step(model, opt, [collate([SftExample((1, 5), (6, 2))], 0)])
    assert not torch.isfinite(torch.tensor(loss))
    assert opt.state == {}  # the optimizer never stepped
    for p, q in zip(before, model.parameters()):
        assert torch.equal(p, q)
