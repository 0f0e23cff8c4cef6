import dataclasses
import json
import math

import pytest
import torch

import opdkit.rewards.synthetic  # noqa: F401  (registers the synthetic verifiers)
from opdkit.models import TinyModelConfig, build_tiny_model, load_pretrained
from opdkit.rewards.base import VERIFIERS
from opdkit.rollout import SamplingParams, encode_chats, sample
from opdkit.tasks import TaskSpec, generate_splits, prompt_messages
from opdkit.warmstart import FormatMix, OptimConfig, ProbeConfig, WarmStartConfig, WarmStartJob, warm_start

# One-digit addition on a very small model: learnt in a few hundred tiny steps.
SMALL_CONFIG = WarmStartConfig(
    model=TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
    mix=FormatMix(plain=0.5, demo=0.3, feedback=0.2),
    optim=OptimConfig(lr=3e-3, batch_size=32, warmup_steps=10),
    probe=ProbeConfig(problems=8, samples=4, max_new_tokens=12),
    report=ProbeConfig(problems=16, samples=2, max_new_tokens=12),
    opening_until=0.1,
    mix_min_steps=20,
    student_target=0.25,
    teacher_target=0.6,
    eval_every=10,
    max_steps=600,
)
SMALL = WarmStartJob(task=TaskSpec(task="addition", difficulty=1, instruction=False), train_problems=300,
                     config=SMALL_CONFIG)  # fmt: skip


def _with(job: WarmStartJob, **changes) -> WarmStartJob:
    return dataclasses.replace(job, config=dataclasses.replace(job.config, **changes))


def test_cache_key_depends_on_every_field_but_the_cache_folder():
    assert SMALL.cache_key() == dataclasses.replace(SMALL).cache_key()
    assert SMALL.cache_key() != _with(SMALL, seed=1).cache_key()
    assert SMALL.cache_key() != _with(SMALL, optim=OptimConfig(lr=1e-3)).cache_key()
    assert SMALL.cache_key() != dataclasses.replace(SMALL, train_problems=301).cache_key()
    assert (
        SMALL.cache_key()
        != dataclasses.replace(SMALL, task=TaskSpec(task="addition", difficulty=2)).cache_key()
    )
    assert SMALL.cache_key() == _with(SMALL, cache_dir="elsewhere").cache_key()


def _untrained_pass_rate(job: WarmStartJob) -> float:
    config = job.config
    model = build_tiny_model(config.model, load_tokenizer(), seed=config.seed)
    held_out = config.probe.problems + config.report.problems
    problems = generate_splits(job.task, job.train_problems, held_out, config.seed).test
    tok = load_tokenizer()
    ids = encode_chats(tok, [prompt_messages(job.task, p) for p in problems])
    out = sample(model, tok, ids, SamplingParams(n=4, max_new_tokens=12), seed=0)
    verify = VERIFIERS.get(job.task.verifier)()
    return sum(verify(t, problems[i // 4].answer).correct for i, t in enumerate(out.texts)) / len(out.texts)


def load_tokenizer():
    from opdkit.models import build_char_tokenizer

    return build_char_tokenizer()


@pytest.mark.slow
def test_warm_start_trains_caches_and_improves_over_the_untrained_model(tmp_path):
    torch.set_num_threads(1)
    logs: list[str] = []
    small = _with(SMALL, cache_dir=str(tmp_path))
    first = warm_start(small, log=logs.append)
    assert not first.cached and first.path == tmp_path / SMALL.cache_key()
    assert logs and "opening probe pass rate" in logs[0]
    report = first.report
    assert 0 < report.student_step < report.teacher_step <= SMALL.config.max_steps
    # Phases in order; the opening ends at its first probe >= opening_until, the student comes
    # at least mix_min_steps later.
    phases = [p["phase"] for p in report.probes]
    assert phases == sorted(phases, key=["opening", "student", "teacher"].index)
    opening = [p for p in report.probes if p["phase"] == "opening"]
    assert [p["pass_rate"] >= 0.1 for p in opening] == [False] * (len(opening) - 1) + [True]
    assert report.student_step >= opening[-1]["step"] + SMALL.config.mix_min_steps
    chosen = [p for p in report.probes if p.get("student")]
    assert len(chosen) == 1 and chosen[0]["step"] == report.student_step
    for rate in (report.student_pass_rate, report.teacher_pass_rate, report.student_demo_pass_rate):
        assert 0.0 <= rate <= 1.0
    assert math.isnan(report.student_feedback_pass_rate) or 0 <= report.student_feedback_pass_rate <= 1
    # Trained from scratch, the untrained model essentially never answers right; both trained models do.
    baseline = _untrained_pass_rate(SMALL)
    assert report.student_pass_rate > baseline and report.teacher_pass_rate > baseline
    assert report.teacher_pass_rate >= report.student_pass_rate

    # Both folders load like any Hugging Face model, with the same tokenizer.
    student, teacher = load_pretrained(first.student_path), load_pretrained(first.teacher_path)
    assert student.tokenizer.get_vocab() == teacher.tokenizer.get_vocab()
    assert not all(torch.equal(p, q) for p, q in zip(student.model.parameters(), teacher.model.parameters()))
    assert json.loads((first.path / "config.json").read_text()) == small.hashed()

    # The second call is a cache hit: same folder, same report, nothing retrained.
    second = warm_start(small, log=logs.append)
    assert second.cached and second.path == first.path and second.report == first.report
    assert [p.name for p in tmp_path.iterdir()] == [SMALL.cache_key()]  # no temporary folders left


@pytest.mark.parametrize("opening_until, student_target", [(1.01, 0.25), (0.0, 1.01)])
def test_a_target_never_reached_is_an_error_and_leaves_nothing(tmp_path, opening_until, student_target):
    hopeless = _with(SMALL, max_steps=10, opening_until=opening_until, mix_min_steps=0,
                     student_target=student_target, cache_dir=str(tmp_path))  # fmt: skip
    with pytest.raises(RuntimeError, match=r"never reached pass rate 1\.01 in 10 steps"):
        warm_start(hopeless)
    assert list(tmp_path.iterdir()) == []


def test_the_curriculum_mixes_easier_plain_questions_into_its_first_steps_only():
    import re

    import opdkit.warmstart.run as run
    from opdkit.warmstart import CurriculumConfig

    two_digit = dataclasses.replace(SMALL, task=TaskSpec(task="addition", difficulty=2, instruction=False))
    job = _with(two_digit, curriculum=CurriculumConfig(difficulty=1, share=0.25, steps=2))
    setup = run._build(job)
    tok = setup.tokenizer
    for example in setup.pools["curriculum"]:
        a, b = map(int, re.search(r"What is (\d+)\+(\d+)\?", tok.decode(example.prompt_ids)).groups())
        assert a < 10 and b < 10 and tok.decode(example.target_ids[:-1]) == f"\\boxed{{{a + b}}}"
    assert all(len(re.findall(r"\d+", tok.decode(e.prompt_ids))[0]) == 2 for e in setup.pools["plain"])
    trainer = run._Trainer(build_tiny_model(job.config.model, tok, seed=0), setup, job)
    mix = job.config.mix  # plain 0.5, demo 0.3, feedback 0.2 -> each scaled by 1 - 0.25 beside 0.25 easy
    expected = {"curriculum": 0.25, "plain": 0.375, "demo": 0.225, "feedback": 0.15}
    assert trainer._weights(mix) == pytest.approx(expected)
    trainer.train_step(mix)
    trainer.train_step(mix)
    assert trainer._weights(mix) == mix.weights()  # after curriculum.steps the job's own mix alone


def test_the_teacher_phase_scales_the_learning_rate_from_its_first_step():
    import opdkit.warmstart.run as run

    job = _with(SMALL, optim=OptimConfig(lr=2e-3, batch_size=4, warmup_steps=4))
    setup = run._build(job)
    trainer = run._Trainer(build_tiny_model(job.config.model, setup.tokenizer, seed=0), setup, job)
    rates = []
    for _ in range(5):  # warm-up: 2e-3 * (s + 1) / 4 -> 1e-3 after 1 step, 2e-3 from step 3 on
        trainer.train_step(job.config.mix)
        rates.append(trainer.optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([1e-3, 1.5e-3, 2e-3, 2e-3, 2e-3])
    trainer.set_lr_scale(0.25)  # takes effect before the next step, not one step late
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    trainer.train_step(job.config.mix)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
