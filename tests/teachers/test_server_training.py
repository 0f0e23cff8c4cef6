"""``scope`` end to end with ``teacher.kind=server``: a real ``opdkit serve-teacher`` process scores the
rollouts of the real training loop, directly and through the fault proxy.

- Direct: the run completes, every row is scored, and the teacher terms are the ones a local copy of the same
  teacher gives (same seed, same rollouts -> the same loss on step 1).
- Persistent 500s: rows are retried, counted in ``teacher/failed_rows``, never filled with zeros (the loss
  stays finite), and the run stops after ``teacher.max_failed_steps`` consecutive failed steps with a
  checkpoint and a status saying why.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from fault_proxy import FaultProxy

from lm_fixtures import save_tiny_pair
from opdkit.train.config import load_config
from opdkit.train.loop import train
from server_process import start_server, stop_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def char_models(tmp_path_factory) -> dict[str, Path]:
    """Student and teacher on opdkit's character tokenizer (the one the synthetic task is written in)."""
    return save_tiny_pair(tmp_path_factory.mktemp("char_models"))


@pytest.fixture(scope="module")
def char_server(char_models, tmp_path_factory):
    server = start_server(char_models["teacher"], tmp_path_factory.mktemp("srv") / "server.log")
    yield server
    stop_server(server)


def _overrides(models: dict[str, Path], steps: int, *teacher: str) -> list[str]:
    return [
        "method.name=scope", f"model.student={models['student']}", f"steps={steps}",
        "data.train=task", "data.eval=task", "data.task.difficulty=1", "data.task.train_size=64",
        "rollout.prompts_per_step=3", "rollout.n=4", "rollout.max_new_tokens=6",
        "eval.every=0", "eval.at_start=false", "checkpoint_every=0", *teacher,
    ]  # fmt: skip


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_scope_with_a_server_teacher_equals_a_local_teacher(char_models, char_server, tmp_path):
    server = ["teacher.kind=server", f"teacher.url={char_server.url}", "teacher.rows_per_request=4"]
    local = ["teacher.kind=local", f"teacher.path={char_models['teacher']}"]
    runs = {}
    for name, teacher in (("server", server), ("local", local)):
        result = train(load_config(None, _overrides(char_models, 2, *teacher)), tmp_path / name)
        assert result.status == "completed"
        runs[name] = _rows(tmp_path / name)
    for row in runs["server"]:
        assert row["teacher/failed_rows"] == 0 and row["teacher/valid_fraction"] == 1.0
    first_server, first_local = runs["server"][0], runs["local"][0]
    assert first_server["reward/mean"] == first_local["reward/mean"]  # same seed -> same rollouts
    assert first_server["loss/total"] == pytest.approx(first_local["loss/total"], abs=1e-5)


def test_a_dead_teacher_is_counted_and_stops_the_run(char_models, char_server, tmp_path):
    proxy = FaultProxy(char_server.url).start()
    try:
        proxy.set_faults([], then="500")
        faulty = ["teacher.kind=server", f"teacher.url={proxy.url}", "teacher.max_failed_steps=2",
                  "teacher.max_retries=1", "teacher.timeout_s=5"]  # fmt: skip
        cfg = load_config(None, _overrides(char_models, 5, *faulty))
        result = train(cfg, tmp_path / "run")
    finally:
        proxy.stop()
    assert result.status == "stopped: teacher failed on 2 consecutive steps" and result.last_step == 2
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["teacher/failed_rows"] > 0
        assert math.isfinite(row.get("loss/total", 0.0))
    assert rows[-1]["teacher/consecutive_failed_steps"] == 2
    assert any((tmp_path / "run" / "checkpoints").iterdir())
