"""An interrupted warm start leaves no temporary folder for ever: the writer removes its own on any error
(try/finally), and the next warm start removes those of processes that were killed (SIGKILL skips finally)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import opdkit.warmstart.run as warmstart_run
from opdkit.warmstart import WarmStartConfig, WarmStartJob, remove_stale_temporaries, warm_start


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no such process any more


def test_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = tmp_path / f".abc123.tmp-{_dead_pid()}-x1y2"
    live = tmp_path / f".abc123.tmp-{os.getpid()}-z3w4"
    legacy = tmp_path / ".abc123.tmp-q8r9"  # no process id: cannot tell, kept
    cached = tmp_path / "abc123"
    for folder in (dead, live, legacy, cached):
        (folder / "student").mkdir(parents=True)
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert not dead.exists() and live.is_dir() and legacy.is_dir() and cached.is_dir()


def test_a_failed_warm_start_removes_its_temporary_and_the_next_one_cleans_the_killed(tmp_path, monkeypatch):
    job = WarmStartJob(config=WarmStartConfig(cache_dir=str(tmp_path)))
    killed = tmp_path / f".{job.cache_key()}.tmp-{_dead_pid()}-abcd"
    (killed / "student").mkdir(parents=True)

    def interrupted(job, out, log):
        (out / "student").mkdir()
        assert str(os.getpid()) in out.name  # the temporary carries its writer's process id
        raise KeyboardInterrupt  # Ctrl-C in the middle of the supervised training

    monkeypatch.setattr(warmstart_run, "run_warm_start", interrupted)
    with pytest.raises(KeyboardInterrupt):
        warm_start(job)
    assert list(tmp_path.iterdir()) == []  # the killed run's folder and its own are both gone
