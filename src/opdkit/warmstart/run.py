"""The warm start's training run (called by ``cache.warm_start``, which handles caching).

Kept apart from the config and cache code so each file reads top to bottom: build the data pools, train the
student phase, train the teacher phase, measure the report.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import opdkit.rewards.synthetic  # noqa: F401  (registers the synthetic verifiers)
from opdkit.models import build_char_tokenizer, build_tiny_model, save_pretrained_atomic
from opdkit.rewards.base import VERIFIERS, Verifier, safe_verdict
from opdkit.rollout import SamplingParams, encode_chats, sample
from opdkit.tasks import STYLES, Problem, generate_problems, prompt_messages
from opdkit.teachers.reprompt import reprompt_user_text
from opdkit.warmstart.config import FormatMix, ProbeConfig, WarmStartJob, WarmStartReport, warm_start_problems
from opdkit.warmstart.prompts import PROMPT_FORMATS, PromptContext
from opdkit.warmstart.sft import SftExample, collate, sft_step

_PROBE_SEED_SALT = 7919  # probes sample with seed + salt + step, apart from any training draw


@dataclass(frozen=True)
class _Setup:
    tokenizer: Any
    verifier: Verifier
    pools: dict[str, list[SftExample]]
    probe_set: list[Problem]
    report_set: list[Problem]


def _build(job: WarmStartJob) -> _Setup:
    config = job.config
    tok = build_char_tokenizer()
    verifier = VERIFIERS.get(job.task.verifier)(detailed=config.feedback_detailed)
    problems = warm_start_problems(job)
    formats = {k for mix in (config.opening_mix, config.mix, config.teacher_mix) for k in mix.weights()}
    rng = random.Random(config.seed)
    ctx = PromptContext(job.task, job.template, verifier, rng)
    style = STYLES.get(job.task.style)
    targets = [
        (*tok(style.reference(p), add_special_tokens=False)["input_ids"], tok.eos_token_id)
        for p in problems.train
    ]
    pools = {}
    for name in sorted(formats):
        prompts = encode_chats(tok, [PROMPT_FORMATS.get(name)(ctx, p) for p in problems.train])
        pools[name] = [SftExample(tuple(p), t) for p, t in zip(prompts, targets)]
    if config.curriculum.steps and config.curriculum.share:
        pools[_EASY] = _easy_pool(job, tok)
    return _Setup(tok, verifier, pools, problems.probe, problems.report)


_EASY = "curriculum"  # the pool of the curriculum's easier plain questions


def _easy_pool(job: WarmStartJob, tok: Any) -> list[SftExample]:
    """Plain questions of ``job.task`` at the curriculum's difficulty, one per training problem."""
    spec = dataclasses.replace(job.task, difficulty=job.config.curriculum.difficulty)
    problems = generate_problems(spec, job.train_problems, job.config.seed + 3)
    style = STYLES.get(spec.style)
    prompts = encode_chats(tok, [prompt_messages(spec, p) for p in problems])
    targets = [
        (*tok(style.reference(p), add_special_tokens=False)["input_ids"], tok.eos_token_id) for p in problems
    ]
    return [SftExample(tuple(p), t) for p, t in zip(prompts, targets)]


def _split_batch(batch_size: int, weights: dict[str, float]) -> dict[str, int]:
    """Rows per format summing to ``batch_size`` (largest remainders)."""
    exact = {k: batch_size * w for k, w in weights.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[: batch_size - sum(counts.values())]:
        counts[k] += 1
    return counts


def pass_rate(
    model: Any, setup: _Setup, conversations: list, golds: list[str], probe: ProbeConfig, seed: int
):
    """Mean verifier success of ``probe.samples`` sampled answers per conversation, and the rollout texts."""
    params = SamplingParams(
        n=probe.samples, temperature=probe.temperature, max_new_tokens=probe.max_new_tokens
    )
    rollout = sample(model, setup.tokenizer, encode_chats(setup.tokenizer, conversations), params, seed=seed)
    golds_N = [g for g in golds for _ in range(probe.samples)]
    verdicts = [
        safe_verdict(setup.verifier, t, g, bool(tr))  # model output never raises out of a verifier
        for t, g, tr in zip(rollout.texts, golds_N, rollout.truncated_N)
    ]
    return sum(v.correct for v in verdicts) / max(1, len(verdicts)), verdicts


class _Trainer:
    """The model, its optimizer and the data stream of one warm-start run."""

    def __init__(self, model: Any, setup: _Setup, job: WarmStartJob) -> None:
        config = job.config
        opt = config.optim
        self.model, self.setup, self.job, self.config = model, setup, job, config
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
        warmup = max(1, opt.warmup_steps)
        self.lr_scale = 1.0  # the teacher phase sets config.teacher_lr_scale
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) * self.lr_scale
        )
        self.rng = random.Random(config.seed + 1)
        self.step = 0
        self.train_seconds = 0.0
        self.probes: list[dict[str, Any]] = []

    def train_step(self, mix: FormatMix) -> float:
        start = time.perf_counter()
        pad = self.setup.tokenizer.pad_token_id
        micro = []
        for name, count in _split_batch(self.config.optim.batch_size, self._weights(mix)).items():
            pool = self.setup.pools[name]
            if count:
                micro.append(collate([pool[self.rng.randrange(len(pool))] for _ in range(count)], pad))
        loss = sft_step(self.model, self.optimizer, micro, max_grad_norm=self.config.optim.max_grad_norm)
        self.scheduler.step()
        self.step += 1
        self.train_seconds += time.perf_counter() - start
        return loss

    def _weights(self, mix: FormatMix) -> dict[str, float]:
        """The mix's shares, with the curriculum's share of easier questions during its first steps."""
        easy = self.config.curriculum
        if _EASY not in self.setup.pools or self.step >= easy.steps:
            return mix.weights()
        return {_EASY: easy.share} | {k: (1 - easy.share) * w for k, w in mix.weights().items()}

    def set_lr_scale(self, scale: float) -> None:
        """Multiply the scheduled learning rate by ``scale`` from the next step on."""
        self.lr_scale = scale
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)

    def probe(self, phase: str) -> float:
        problems = self.setup.probe_set
        rate, _ = pass_rate(
            self.model, self.setup, _conversations(self.job, self.setup, problems, "plain"),
            _golds(self.job, problems), self.config.probe, self.config.seed + _PROBE_SEED_SALT + self.step,
        )  # fmt: skip
        self.probes.append({"step": self.step, "pass_rate": rate, "phase": phase})
        return rate

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}


def _conversations(job: WarmStartJob, setup: _Setup, problems: Sequence[Problem], fmt: str) -> list:
    ctx = PromptContext(job.task, job.template, setup.verifier, random.Random(job.config.seed + 2))
    return [PROMPT_FORMATS.get(fmt)(ctx, p) for p in problems]


def _golds(job: WarmStartJob, problems: Sequence[Problem]) -> list[str]:
    style = STYLES.get(job.task.style)
    return [style.gold(p) for p in problems]


@dataclass(frozen=True)
class _Checkpoint:
    state: dict[str, torch.Tensor]
    step: int
    pass_rate: float


def _train_until(
    trainer: _Trainer, mix: FormatMix, phase: str, target: float, log: Callable[[str], None]
) -> bool:
    """Train with ``mix``, probing every ``eval_every`` steps, until a probe reaches ``target`` (True) or
    ``max_steps`` is spent (False)."""
    cfg = trainer.config
    while trainer.step < cfg.max_steps:
        loss = trainer.train_step(mix)
        if trainer.step % cfg.eval_every == 0:
            rate = trainer.probe(phase)
            log(f"warm start: step {trainer.step} loss {loss:.3f} {phase} probe pass rate {rate:.2f}")
            if rate >= target:
                return True
    return False


def _train_opening(trainer: _Trainer, log: Callable[[str], None]) -> None:
    """Train with ``opening_mix`` until a probe reaches ``opening_until`` (skipped when it is 0).

    Why: mixing reprompt formats in from the first step lengthened the plain task's plateau and made its
    length depend on the seed (475-975 steps); plain questions alone leave it sooner
    (benchmarks/RESULTS.md)."""
    cfg = trainer.config
    if cfg.opening_until <= 0:
        return
    if not _train_until(trainer, cfg.opening_mix, "opening", cfg.opening_until, log):
        raise RuntimeError(_never_reached(trainer, cfg.opening_until))


def _never_reached(trainer: _Trainer, target: float) -> str:
    cfg = trainer.config
    history = ", ".join(f"{p['step']}: {p['pass_rate']:.2f}" for p in trainer.probes)
    return (
        f"warm start: the model never reached pass rate {target} in {cfg.max_steps} steps "
        f"(probes {history}); raise max_steps or the learning rate, or lower the task difficulty"
    )


def _train_student(trainer: _Trainer, log: Callable[[str], None]) -> _Checkpoint:
    """Train with ``mix`` for at least ``mix_min_steps`` steps, then until a probe reaches
    ``student_target``; keep the nearer of that probe and the one before (if it was past the minimum)."""
    cfg = trainer.config
    first = trainer.step + cfg.mix_min_steps
    previous: _Checkpoint | None = None
    while trainer.step < cfg.max_steps:
        loss = trainer.train_step(cfg.mix)
        if trainer.step % cfg.eval_every or trainer.step < first:
            continue
        rate = trainer.probe("student")
        log(f"warm start: step {trainer.step} loss {loss:.3f} student probe pass rate {rate:.2f}")
        current = _Checkpoint(trainer.snapshot(), trainer.step, rate)
        if rate >= cfg.student_target:
            nearer_before = previous is not None and abs(previous.pass_rate - cfg.student_target) < abs(
                rate - cfg.student_target
            )
            chosen = previous if nearer_before else current
            for probe in trainer.probes:
                probe["student"] = probe["step"] == chosen.step
            return chosen
        previous = current
    raise RuntimeError(_never_reached(trainer, cfg.student_target))


def _train_teacher(trainer: _Trainer, log: Callable[[str], None]) -> None:
    """Keep training with ``teacher_mix`` until a probe reaches ``teacher_target`` (or ``max_steps``)."""
    cfg = trainer.config
    trainer.set_lr_scale(cfg.teacher_lr_scale)
    if not _train_until(trainer, cfg.teacher_mix, "teacher", cfg.teacher_target, log):
        log(f"warm start: the teacher stopped at max_steps={cfg.max_steps} below {cfg.teacher_target}")


def _feedback_rate(student: Any, setup: _Setup, job: WarmStartJob, verdicts: list, seed: int):
    """Re-ask each problem the student got wrong, with the verifier's feedback on that very attempt."""
    config = job.config
    problems, golds = setup.report_set, _golds(job, setup.report_set)
    plain = _conversations(job, setup, problems, "plain")
    convs, conv_golds = [], []
    for i, verdict in enumerate(verdicts):
        q = i // config.report.samples
        if not verdict.correct and verdict.feedback:
            text = reprompt_user_text(plain[q][-1]["content"], None, verdict.feedback, job.template)
            convs.append([*plain[q][:-1], {"role": "user", "content": text}])
            conv_golds.append(golds[q])
    if not convs:
        return math.nan, 0
    one = ProbeConfig(problems=len(convs), samples=1, temperature=config.report.temperature,
                      max_new_tokens=config.report.max_new_tokens)  # fmt: skip
    rate, _ = pass_rate(student, setup, convs, conv_golds, one, seed)
    return rate, len(convs)


def run_warm_start(job: WarmStartJob, out: Path, log: Callable[[str], None]) -> WarmStartReport:
    """Train both models into ``out/student`` and ``out/teacher`` and measure the report."""
    start, config = time.perf_counter(), job.config
    setup = _build(job)
    model = build_tiny_model(config.model, setup.tokenizer, seed=config.seed)
    trainer = _Trainer(model, setup, job)
    _train_opening(trainer, log)
    chosen = _train_student(trainer, log)
    _train_teacher(trainer, log)
    teacher = trainer.model.eval()
    save_pretrained_atomic(teacher, setup.tokenizer, out / "teacher")
    student = build_tiny_model(config.model, setup.tokenizer, seed=config.seed)
    student.load_state_dict(chosen.state)
    save_pretrained_atomic(student, setup.tokenizer, out / "student")

    problems, golds, seed = (
        setup.report_set,
        _golds(job, setup.report_set),
        config.seed + 2 * _PROBE_SEED_SALT,
    )
    plain = _conversations(job, setup, problems, "plain")
    teacher_rate, _ = pass_rate(teacher, setup, plain, golds, config.report, seed)
    student_rate, verdicts = pass_rate(student, setup, plain, golds, config.report, seed)
    demo = _conversations(job, setup, problems, "demo")
    demo_rate, _ = pass_rate(student, setup, demo, golds, config.report, seed)
    feedback_rate, attempts = _feedback_rate(student, setup, job, verdicts, seed)
    report = WarmStartReport(
        student_pass_rate=student_rate,
        teacher_pass_rate=teacher_rate,
        student_demo_pass_rate=demo_rate,
        student_feedback_pass_rate=feedback_rate,
        feedback_attempts=attempts,
        student_step=chosen.step,
        teacher_step=trainer.step,
        train_seconds=round(trainer.train_seconds, 2),
        total_seconds=round(time.perf_counter() - start, 2),
        probes=trainer.probes,
    )
    log(
        f"warm start: student {report.student_pass_rate:.3f} (step {report.student_step}), teacher "
        f"{report.teacher_pass_rate:.3f} (step {report.teacher_step}), student with a demonstration "
        f"{report.student_demo_pass_rate:.3f}; {report.total_seconds:.0f} s (probes in report.json)"
    )
    return report
