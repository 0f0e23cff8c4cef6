"""Warm start: a strong teacher and a 20-50 % student on a synthetic task, cached by config hash.

On-policy methods need a student that sometimes succeeds (pass rate strictly between 0 and 1 in many groups)
and, for OPD/SCOPE, a teacher that is much better. A tiny model trained from scratch is neither, so this
module trains one by supervised learning on the task's reference completions (measured: 2-digit addition on
a 0.5 M-parameter model goes from 0 to ~35 % sampled accuracy in a few hundred steps):

1. The opening: plain questions only (``opening_mix``) until a probe's pass rate reaches ``opening_until``:
   the arithmetic first, since mixing the reprompt formats in from the start made the length of the plain
   task's plateau depend on the seed. The models start from initial weights of std 0.05
   (``WARM_START_INIT_STD``), where the plateau's exit no longer depends on float32 rounding
   (benchmarks/RESULTS.md, "a warm start that does not depend on the processor").
2. Train on a mix of prompt formats (``mix``, prompts in ``prompts``): plain questions, and SDPO-style
   reprompts holding a correct demonstration or the verifier's feedback on a wrong attempt, so the student's
   *self-teacher* can read its context (docs/algorithms.md §4.2-4.4). After ``mix_min_steps`` steps, every
   ``eval_every`` steps probe the sampled pass rate on held-out problems. The first time it reaches
   ``student_target``, keep whichever of this and the previous probed checkpoint is nearer the target: that
   is the student.
3. Keep training (``teacher_mix``, by default plain questions only, at ``teacher_lr_scale`` times the
   learning rate) until the pass rate reaches ``teacher_target``: that is the teacher. Both share the
   tokenizer and the architecture.
4. Report the sampled pass rates of: teacher; student; student given a correct demonstration in the reprompt
   (what SDPO's self-teacher sees when a sibling succeeded); student re-asked with the verifier's feedback on
   its own wrong attempts.

Results live in ``<cache_dir>/<hash>/{student,teacher,report.json,config.json}``; the hash covers the job
(``WarmStartJob``: the config, the task, the template) and ``WARMSTART_VERSION``. The folder is written under
a temporary name and renamed when complete, so a killed run never leaves a half-written cache entry; the
temporary name carries the writer's process id, and the next warm start in the same cache removes the
temporary folders of processes that no longer run. Call with one intra-op thread on CPU
(``torch.set_num_threads(1)``)::

    result = warm_start(WarmStartJob(config=WarmStartConfig(cache_dir=".cache/opdkit/warmstart")))
    result.student_path, result.teacher_path, result.report.student_pass_rate
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from opdkit.warmstart.config import WarmStartJob, WarmStartReport


@dataclass(frozen=True)
class WarmStartResult:
    """Where the models are (each folder loads with ``AutoModelForCausalLM`` / ``AutoTokenizer``)."""

    path: Path
    student_path: Path
    teacher_path: Path
    report: WarmStartReport
    cached: bool


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


def warm_start(job: WarmStartJob, *, log: Callable[[str], None] | None = None) -> WarmStartResult:
    """Train (or load from ``job.config.cache_dir``) the teacher and the student of ``job``; see the module
    docstring."""
    from opdkit.warmstart.run import run_warm_start  # torch and the models only when training

    final = Path(job.config.cache_dir) / job.cache_key()
    if (final / "report.json").is_file():
        return _result(final, cached=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        report = run_warm_start(job, tmp, log or (lambda message: None))
        (tmp / "config.json").write_text(json.dumps(job.hashed(), indent=2, sort_keys=True))
        (tmp / "report.json").write_text(json.dumps(asdict(report), indent=2))
        try:
            tmp.rename(final)
        except OSError:  # another process finished the same config first: keep its copy
            if not (final / "report.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _result(final, cached=False)
