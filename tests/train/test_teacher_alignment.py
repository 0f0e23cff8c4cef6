"""Teacher alignment (§0): the response logits come from columns P−1 .. P+T−2 of each forward,
with P the prompt width of *that* forward, whatever the padding."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from opdkit.core.sequence import left_pad
from opdkit.teachers.local import LocalTeacher
from opdkit.train.forward import forward_response
from opdkit.train.methods import METHODS


def _unpadded_logits(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """Logits predicting each response token from a single unpadded row: columns len(prompt)-1 ..."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0]
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(response)]


def test_local_teacher_logprobs_equal_a_direct_forward(step_setup, tiny_dirs):
    _, batch, _ = step_setup("opd")
    teacher = LocalTeacher.from_path(str(tiny_dirs["teacher"]), batch_size=5)  # batches cut across groups
    scores = teacher.score(batch.unpadded_prompts(), batch.unpadded_responses())
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["teacher"]).eval()
    with torch.no_grad():
        for i, (prompt, response) in enumerate(zip(batch.unpadded_prompts(), batch.unpadded_responses())):
            logp = torch.log_softmax(_unpadded_logits(model, prompt, response), dim=-1)
            direct = logp.gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)
            assert torch.allclose(scores.logp_N_T[i, : len(response)], direct, atol=1e-5)
            assert torch.all(scores.logp_N_T[i, len(response) :] == 0)
    assert scores.valid_N.all()


def test_self_teacher_uses_its_own_prompt_length(step_setup):
    cfg, batch, ctx = step_setup("sdpo", [1, 0, 0, 0] * 4)
    rows = METHODS.get("sdpo").prepare(cfg, batch, ctx).rows
    teacher_prompts = [
        ids[m.bool()].tolist() for ids, m in zip(rows.teacher_prompts.ids_N_P, rows.teacher_prompts.mask_N_P)
    ]
    # The reprompted prompts are longer than the student's (they hold a demonstration), and differ in length.
    assert min(len(t) for t in teacher_prompts[1:4]) > max(len(p) for p in batch.unpadded_prompts())
    with torch.no_grad():
        out = forward_response(ctx.student, rows.teacher_prompts.sequences(batch), 1.0)
        for i, response in enumerate(batch.unpadded_responses()):
            direct = _unpadded_logits(ctx.student, teacher_prompts[i], response)
            assert torch.allclose(out.logits_N_T_V[i, : len(response)], direct, atol=1e-5)


def test_left_padding_changes_no_logit():
    # One prompt alone vs the same prompt left-padded next to a longer one: identical response logits.
    from opdkit.models import TinyModelConfig, build_char_tokenizer, build_tiny_model

    tok = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2), tok, seed=3).eval()
    prompts = [tok("ab")["input_ids"], tok("a much longer prompt")["input_ids"]]
    ids, mask = left_pad(prompts, tok.pad_token_id)
    response = tok("xyz")["input_ids"]
    from opdkit.train.batch import StepBatch

    two_false = torch.zeros(2, dtype=torch.bool)
    batch = StepBatch(
        prompt_ids_N_P=ids, prompt_mask_N_P=mask,
        response_ids_N_T=torch.tensor([response, response]),
        response_mask_N_T=torch.ones(2, 3, dtype=torch.long),
        group_ids_N=torch.tensor([0, 1]), rewards_N=torch.zeros(2), success_N=two_false,
        old_logp_N_T=torch.zeros(2, 3), example_index_N=torch.tensor([0, 1]), truncated_N=two_false,
    )  # fmt: skip
    with torch.no_grad():
        out = forward_response(model, batch.sequences(), 1.0)
        assert torch.allclose(out.logits_N_T_V[0], _unpadded_logits(model, prompts[0], response), atol=1e-5)
        assert torch.allclose(out.logits_N_T_V[1], _unpadded_logits(model, prompts[1], response), atol=1e-5)
