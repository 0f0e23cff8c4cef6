"""The warm start's one configuration and the job it runs on.

``WarmStartConfig`` is the ``warmstart`` section of a training config; ``WarmStartJob`` is that config plus
what the training run supplies (the task, the reprompt template, the pool size), with the job's cache key and
its problem split.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from opdkit.core.fields import doc, section
from opdkit.models import TinyModelConfig
from opdkit.tasks import Problem, TaskSpec, generate_splits
from opdkit.teachers.reprompt import RepromptTemplate
from opdkit.warmstart.prompts import COMPACT_TEMPLATE

WARMSTART_VERSION = 2  # bump whenever the procedure changes what a given config produces
DEFAULT_CACHE_DIR = ".cache/opdkit/warmstart"
# Initial weights' std of the warm-started models. At transformers' 0.02 the model starts near a saddle
# (near-uniform attention, small logits), and the step at which it leaves the plain task's plateau (the units
# digit) depends on float32 rounding: 350 or 600 steps for one seed, its initial weights perturbed by 2^-23
# or not. At 0.05 it leaves at 250-325 steps over 3 seeds, the perturbation moving it by at most one probe;
# 0.08 gives 350-475 (benchmarks/RESULTS.md, "a warm start that does not depend on the processor").
WARM_START_INIT_STD = 0.05


@dataclass(frozen=True)
class FormatMix:
    """Share of each prompt format (``prompts.PROMPT_FORMATS``) in every batch; normalised, zeros skipped."""

    plain: float = 0.5
    demo: float = 0.5
    feedback: float = 0.0
    demo_feedback: float = 0.0

    def weights(self) -> dict[str, float]:
        raw = {k: float(v) for k, v in asdict(self).items() if v > 0}
        if not raw:
            raise ValueError("FormatMix: at least one format needs a positive share")
        return {k: v / sum(raw.values()) for k, v in raw.items()}


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then a constant rate; the loss is on target tokens only.

    With the default initial std (``WARM_START_INIT_STD``) lr 1e-3 and 32 rows leave the plain task's
    plateau (the units digit's mod-10 table) at 250-325 steps over 3 seeds, perturbed or not; lr 3e-3 with
    128 rows sat on it for 375-950 steps depending on the processor (benchmarks/RESULTS.md)."""

    lr: float = 1e-3
    batch_size: int = 32
    warmup_steps: int = 50
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class CurriculumConfig:
    """Easier problems of the same task first: for the first ``steps`` steps, ``share`` of every batch is
    plain questions at ``difficulty`` (1-digit sums before 2-digit ones); ``steps`` 0 = off. Probes and the
    report always use the job's own task."""

    difficulty: int = 1
    share: float = 0.0
    steps: int = 0


@dataclass(frozen=True)
class ProbeConfig:
    """How pass rates are measured: ``samples`` sampled answers for each of ``problems`` held-out problems."""

    problems: int = 32
    samples: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 16


@dataclass(frozen=True)
class WarmStartConfig:
    """How ``model.student: tiny`` is made: supervised training of a strong teacher and a 20-50 % student on
    the run's task, with SDPO reprompt formats written with the run's self-teacher template, cached by a hash
    of everything here but ``cache_dir`` (see ``WarmStartJob.cache_key``)."""

    cache_dir: str = doc(DEFAULT_CACHE_DIR, "where warm-started models are cached by config hash")
    seed: int = doc(
        0, "seed of the warm start (independent of the run's seed, so runs share the models)", ge=0
    )
    model: TinyModelConfig = section(
        lambda: TinyModelConfig(initializer_range=WARM_START_INIT_STD),
        "architecture of the tiny teacher and student",
    )
    opening_mix: FormatMix = section(
        lambda: FormatMix(plain=1.0, demo=0.0), "prompt formats until a probe reaches opening_until"
    )
    opening_until: float = doc(
        0.2,
        "the opening (arithmetic first, reprompt formats later) ends at this probe pass rate; 0 = no opening",
        ge=0,
        le=1,
    )
    mix: FormatMix = section(
        lambda: FormatMix(plain=0.25, demo=0.75), "prompt formats while training the student"
    )
    mix_min_steps: int = doc(
        150, "steps with mix after the opening before the student may be chosen (formats are learnt)", ge=0
    )
    teacher_mix: FormatMix = section(
        lambda: FormatMix(plain=1.0, demo=0.0), "prompt formats after the student checkpoint"
    )
    optim: OptimConfig = section(OptimConfig, "supervised optimizer")
    curriculum: CurriculumConfig = section(CurriculumConfig, "easier problems of the task at the start")
    probe: ProbeConfig = section(ProbeConfig, "pass-rate probes that pick the checkpoints")
    report: ProbeConfig = section(
        lambda: ProbeConfig(problems=128, samples=4), "pass rates reported at the end (held-out)"
    )
    student_target: float = doc(
        0.3, "the student is the probed checkpoint nearest this pass rate", ge=0, le=1
    )
    # 0.75 rather than 0.8: the teacher's probe sits at 0.70-0.78 for up to 300 steps before 0.8 for some
    # seeds (the step counts then spread 550-925); a lower rate after the student steadies the climb.
    teacher_target: float = doc(0.75, "train the teacher until its pass rate reaches this", ge=0, le=1)
    teacher_lr_scale: float = doc(0.3, "the learning rate after the student checkpoint, times optim.lr", gt=0)
    eval_every: int = doc(25, "probe every N supervised steps", ge=1)
    max_steps: int = doc(3000, "supervised step limit", ge=1)
    feedback_detailed: bool = doc(True, "detailed verifier feedback in feedback prompts")


@dataclass(frozen=True)
class WarmStartJob:
    """One warm start: ``config`` applied to ``task`` (instructions off by default: the format is learnt and
    prompts stay short), its reprompts written with ``template`` (the self-teacher's), on a pool of
    ``train_problems`` training problems (probe and report problems are held out from it)."""

    task: TaskSpec = field(default_factory=lambda: TaskSpec(task="addition", difficulty=2, instruction=False))
    template: RepromptTemplate = COMPACT_TEMPLATE
    train_problems: int = 8000
    config: WarmStartConfig = field(default_factory=WarmStartConfig)

    def hashed(self) -> dict[str, Any]:
        """What decides the models: everything but where they are cached."""
        fields = asdict(self)
        del fields["config"]["cache_dir"]
        return fields

    def cache_key(self) -> str:
        """16 hex digits of sha256 over ``hashed()`` and ``WARMSTART_VERSION``."""
        blob = json.dumps({"version": WARMSTART_VERSION, "job": self.hashed()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class WarmStartProblems:
    """The problems of a warm start: ``train`` (its training pool), ``probe`` (checkpoint selection) and
    ``report`` (the report's pass rates). The three are disjoint; later training and evaluation on the same
    task should draw from ``train`` and evaluate on ``report``, so no evaluation question was trained on."""

    train: list[Problem]
    probe: list[Problem]
    report: list[Problem]


def warm_start_problems(job: WarmStartJob) -> WarmStartProblems:
    """The deterministic problem split of ``job`` (``tasks.generate_splits``)."""
    cfg = job.config
    held_out = cfg.probe.problems + cfg.report.problems
    splits = generate_splits(job.task, job.train_problems, held_out, cfg.seed)
    return WarmStartProblems(
        splits.train, splits.test[: cfg.probe.problems], splits.test[cfg.probe.problems :]
    )


@dataclass(frozen=True)
class WarmStartReport:
    """Sampled pass rates on held-out problems (``config.report``) and what the training took.

    student_demo_pass_rate: the student with a correct demonstration in its reprompt (SDPO's self-teacher).
    student_feedback_pass_rate: the student re-asked, with the verifier's feedback, on the problems where its
      own attempt was wrong (over ``feedback_attempts`` attempts); NaN when it made none.
    probes: the probe history, one ``{"step", "pass_rate", "phase"}`` per probe.
    """

    student_pass_rate: float
    teacher_pass_rate: float
    student_demo_pass_rate: float
    student_feedback_pass_rate: float
    feedback_attempts: int
    student_step: int
    teacher_step: int
    train_seconds: float
    total_seconds: float
    probes: list[dict[str, Any]] = field(default_factory=list)
