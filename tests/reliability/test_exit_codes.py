"""Exit codes a script can rely on: 0 completed, 1 failed (crash), 2 refused (bad input), 3 stopped early.

Defined once in ``opdkit.cli.ExitCode`` and documented in README.md; a run that stops for teacher failures
exited 0 before."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
from reliability_helpers import invoke

from opdkit.cli import ExitCode

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_codes_are_distinct_and_documented():
    assert [c.value for c in ExitCode] == [0, 1, 2, 3]
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Exit codes") :]
    for code in ExitCode:
        assert re.search(rf"\|\s*`?{code.value}`?\s*\|\s*{code.name.lower()}", section), code


def test_a_completed_run_exits_0(short_run, tmp_path):
    result = invoke("train", "tiny/opd", *short_run(), "--output", tmp_path / "run")
    assert result.exit_code == ExitCode.COMPLETED, result.output
    assert "completed at step 1" in result.output


def test_a_run_stopped_for_teacher_failures_exits_3(short_run, tmp_path, monkeypatch):
    # inject the fault the teacher reports when every row failed (server errors after all retries)
    from opdkit.teachers.local import LocalTeacher

    scored = LocalTeacher.score

    def failing(self, *args, **kwargs):
        s = scored(self, *args, **kwargs)
        failed = {"teacher/failed_rows": float(s.valid_N.shape[0])}
        nan_N_T = torch.full_like(s.logp_N_T, float("nan"))
        return dataclasses.replace(s, logp_N_T=nan_N_T, valid_N=torch.zeros_like(s.valid_N), stats=failed)

    monkeypatch.setattr(LocalTeacher, "score", failing)
    overrides = short_run(steps=3, **{"teacher.max_failed_steps": 2})
    result = invoke("train", "tiny/opd", *overrides, "--output", tmp_path / "run")
    assert result.exit_code == ExitCode.STOPPED, result.output
    assert "stopped: teacher failed on 2 consecutive steps at step 2" in result.output
    assert (tmp_path / "run" / "checkpoints" / "step_2").is_dir()  # saved before stopping


def test_any_status_other_than_completed_is_a_stop(tmp_path, monkeypatch):
    # the mapping the CLI applies to every early stop, whatever its reason (e.g. a weight-health stop)
    import opdkit.train as train_pkg
    from opdkit.train.loop import TrainResult

    fake = TrainResult(tmp_path, 4, "stopped: some other reason", None)
    monkeypatch.setattr(train_pkg, "train", lambda *args, **kwargs: fake)
    result = invoke("train", "tiny/grpo", "--output", tmp_path / "run")
    assert result.exit_code == ExitCode.STOPPED
    assert "stopped: some other reason at step 4" in result.output


def test_a_crash_exits_1(tmp_path, monkeypatch):
    import opdkit.train as train_pkg

    def crash(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(train_pkg, "train", crash)
    result = invoke("train", "tiny/grpo", "--output", tmp_path / "run")
    assert result.exit_code == ExitCode.FAILED
    assert isinstance(result.exception, RuntimeError)


def test_bad_input_exits_2(tmp_path):
    assert invoke("train", "tiny/grpo", "steps=0", "--output", tmp_path / "r").exit_code == ExitCode.REFUSED
