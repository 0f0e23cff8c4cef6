"""Warm start: a strong teacher and a 20-50 % student on a synthetic task, cached by config hash.

On-policy methods need a student that sometimes succeeds (pass rate strictly between 0 and 1 in many groups)
and, for OPD/SCOPE, a teacher that is much better. A tiny model trained from scratch is neither, so this
module trains one by supervised learning on the task's reference completions (measured: 2-digit addition on
a 0.5 M-parameter model goes from 0 to ~35 % sampled accuracy in a few hundred steps):

1. Train on a mix of prompt formats (``prompts.py``): plain questions, and SDPO-style reprompts holding a
   correct demonstration or the verifier's feedback on a wrong attempt, so the student's *self-teacher* can
   read its context (docs/algorithms.md §4.2-4.4).
2. Every ``eval_every`` steps, probe the sampled pass rate on held-out problems. The first time it reaches
   ``student_target``, keep whichever of this and the previous probed checkpoint is nearer the target: that
   is the student.
3. Keep training (``teacher_mix``, by default plain questions only) until the pass rate reaches
   ``teacher_target``: that is the teacher. Both share the tokenizer and the architecture.
4. Report the sampled pass rates of: teacher; student; student given a correct demonstration in the reprompt
   (what SDPO's self-teacher sees when a sibling succeeded); student re-asked with the verifier's feedback on
   its own wrong attempts.

Results live in ``<cache_dir>/<hash>/{student,teacher,report.json,config.json}``; the hash covers the config
and ``WARMSTART_VERSION``. The folder is written under a temporary name and renamed when complete, so a
killed run never leaves a half-written cache entry; the temporary name carries the writer's process id, and
the next warm start in the same cache removes the temporary folders of processes that no longer run. Call
with one intra-op thread on CPU
(``torch.set_num_threads(1)``)::

    result = warm_start(WarmStartConfig(), cache_dir=".cache/opdkit/warmstart")
    result.student_path, result.teacher_path, result.report.student_pass_rate
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from opdkit.models import TinyModelConfig
from opdkit.tasks import Problem, TaskSpec, generate_splits
from opdkit.teachers.reprompt import RepromptTemplate
from opdkit.train.prompts import COMPACT_TEMPLATE

WARMSTART_VERSION = 1  # bump whenever the procedure changes what a given config produces
DEFAULT_CACHE_DIR = ".cache/opdkit/warmstart"


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
    """AdamW with linear warmup then a constant rate; the loss is on target tokens only."""

    lr: float = 3e-3
    batch_size: int = 128
    warmup_steps: int = 50
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class ProbeConfig:
    """How pass rates are measured: ``samples`` sampled answers for each of ``problems`` held-out problems."""

    problems: int = 32
    samples: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 16


@dataclass(frozen=True)
class WarmStartConfig:
    """Everything that decides the warm-started models (all of it is hashed into the cache key).

    task: the synthetic task; instructions off by default (the format is learnt; prompts stay short).
    model: the architecture of both models. template: the reprompt template the self-teacher will use.
    mix / teacher_mix: prompt formats before / after the student checkpoint.
    student_target: the student is the probed checkpoint nearest this pass rate once it is reached.
    teacher_target: keep training until the teacher's pass rate reaches this (or ``max_steps``).
    train_problems: size of the training pool; probe and report problems are held out from it.
    feedback_detailed: the verifier's ``detailed`` option for feedback prompts.
    """

    task: TaskSpec = field(default_factory=lambda: TaskSpec(task="addition", difficulty=2, instruction=False))
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    template: RepromptTemplate = COMPACT_TEMPLATE
    mix: FormatMix = FormatMix()
    teacher_mix: FormatMix = FormatMix(plain=1.0, demo=0.0, feedback=0.0)
    optim: OptimConfig = OptimConfig()
    probe: ProbeConfig = ProbeConfig()
    report: ProbeConfig = ProbeConfig(problems=128, samples=4)
    student_target: float = 0.35
    teacher_target: float = 0.8
    eval_every: int = 25
    max_steps: int = 3000
    train_problems: int = 8000
    feedback_detailed: bool = True
    seed: int = 0

    def cache_key(self) -> str:
        """16 hex digits of sha256 over the config and ``WARMSTART_VERSION``."""
        blob = json.dumps({"version": WARMSTART_VERSION, "config": asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


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


@dataclass(frozen=True)
class WarmStartResult:
    """Where the models are (each folder loads with ``AutoModelForCausalLM`` / ``AutoTokenizer``)."""

    path: Path
    student_path: Path
    teacher_path: Path
    report: WarmStartReport
    cached: bool


@dataclass(frozen=True)
class WarmStartProblems:
    """The problems of a warm start: ``train`` (its training pool), ``probe`` (checkpoint selection) and
    ``report`` (the report's pass rates). The three are disjoint; later training and evaluation on the same
    task should draw from ``train`` and evaluate on ``report``, so no evaluation question was trained on."""

    train: list[Problem]
    probe: list[Problem]
    report: list[Problem]


def warm_start_problems(config: WarmStartConfig) -> WarmStartProblems:
    """The deterministic problem split of ``config`` (``tasks.generate_splits``)."""
    held_out = config.probe.problems + config.report.problems
    splits = generate_splits(config.task, config.train_problems, held_out, config.seed)
    return WarmStartProblems(
        splits.train, splits.test[: config.probe.problems], splits.test[config.probe.problems :]
    )


def _result(path: Path, cached: bool) -> WarmStartResult:
    report = WarmStartReport(**json.loads((path / "report.json").read_text()))
    return WarmStartResult(path, path / "student", path / "teacher", report, cached)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temporaries(cache_dir: Path) -> list[Path]:
    """Delete ``.<hash>.tmp-<pid>-*`` folders whose writer process is gone (killed mid warm start) -> them.

    A folder of a live process (another run warming up the same cache) is left alone.
    """
    removed = []
    for entry in Path(cache_dir).glob(".*.tmp-*"):
        pid_text = entry.name.rpartition(".tmp-")[2].partition("-")[0]
        if entry.is_dir() and pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def warm_start(
    config: WarmStartConfig = WarmStartConfig(),
    *,
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
    log: Callable[[str], None] | None = None,
) -> WarmStartResult:
    """Train (or load from the cache) the teacher and the student of ``config``; see the module docstring."""
    from opdkit.train.warmstart_run import run_warm_start

    final = Path(cache_dir) / config.cache_key()
    if (final / "report.json").is_file():
        return _result(final, cached=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        report = run_warm_start(config, tmp, log or (lambda message: None))
        (tmp / "config.json").write_text(json.dumps(asdict(config), indent=2, sort_keys=True))
        (tmp / "report.json").write_text(json.dumps(asdict(report), indent=2))
        try:
            tmp.rename(final)
        except OSError:  # another process finished the same config first: keep its copy
            if not (final / "report.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _result(final, cached=False)
