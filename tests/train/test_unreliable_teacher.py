"""The unreliable teacher: a real local teacher shown a corrupted question on a fixed subset of questions."""

from __future__ import annotations

import torch

from opdkit.rollout import encode_chats
from opdkit.teachers.local import LocalTeacher
from opdkit.teachers.unreliable import UnreliableTeacher, corrupt_question, is_corrupted
from opdkit.train.config import load_config
from opdkit.train.setup import load_models, make_external_teacher


def test_the_last_digit_of_the_prompt_is_shifted_by_one():
    assert corrupt_question("<|u|>What is 37+45?<|a|>") == "<|u|>What is 37+46?<|a|>"
    assert corrupt_question("What is 9+9?") == "What is 9+0?"  # 9 -> 0 (mod 10)
    assert corrupt_question("no digits here") == "no digits here"


def test_the_subset_is_a_fixed_function_of_the_question():
    questions = [f"What is {a}+{b}?" for a in range(40) for b in range(40)]
    share = sum(is_corrupted(q, 0.3) for q in questions) / len(questions)
    assert 0.25 < share < 0.35  # sha256 spreads 1600 questions evenly; the subset is ~30 %
    assert [is_corrupted(q, 0.3) for q in questions[:50]] == [is_corrupted(q, 0.3) for q in questions[:50]]
    assert not any(is_corrupted(q, 0.0) for q in questions) and all(is_corrupted(q, 1.0) for q in questions)


def test_corrupted_rows_get_the_scores_of_the_corrupted_question(tiny_dirs):
    local = LocalTeacher.from_path(str(tiny_dirs["teacher"]))
    tok = local.tokenizer
    questions = [f"What is {a}+{b}?" for a, b in ((12, 34), (5, 61), (70, 8), (33, 33))]
    prompts = encode_chats(tok, [[{"role": "user", "content": q}] for q in questions])
    responses = [tok.encode("\\boxed{46}", add_special_tokens=False)] * 4
    teacher = UnreliableTeacher(local, tok, wrong_fraction=0.5)
    got = teacher.score(prompts, responses)
    flags = [is_corrupted(tok.decode(p), 0.5) for p in prompts]
    assert got.row_flags_N.tolist() == flags and any(flags) and not all(flags)
    assert got.stats["teacher/corrupted_fraction"] == sum(flags) / 4
    shown = [tok.encode(corrupt_question(tok.decode(p)), add_special_tokens=False) if f else p
             for p, f in zip(prompts, flags)]  # fmt: skip
    assert torch.equal(got.logp_N_T, local.score(shown, responses).logp_N_T)
    assert not torch.equal(got.logp_N_T, local.score(prompts, responses).logp_N_T)


def test_teacher_kind_unreliable_comes_from_the_registry(overrides):
    cfg = load_config(None, [*overrides("scope"), "teacher.kind=unreliable", "teacher.wrong_fraction=0.25"])
    models = load_models(cfg, torch.device("cpu"))
    teacher = make_external_teacher(cfg, models, torch.device("cpu"), 1.0)
    assert isinstance(teacher, UnreliableTeacher) and teacher.wrong_fraction == 0.25
