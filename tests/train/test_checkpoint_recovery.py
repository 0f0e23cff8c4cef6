"""Partial and corrupt checkpoints are detected, reported and skipped; resume uses the newest good one.

Checkpoints of a 4-step run at steps 2 and 4, then the step-4 one is damaged three ways (no COMPLETE marker,
a truncated ``state.pt``, a missing model config); a stray ``step_6.tmp-*`` folder of a killed save is added.
``latest_checkpoint`` must name each problem and return step 2, and ``--resume`` must continue from step 2:
metrics rows 3 and 4 are dropped and rewritten, and the run ends at step 4 with the straight run's rows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from opdkit.train import load_config, train
from opdkit.train.checkpoint import latest_checkpoint


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _damage(ckpt: Path, how: str) -> str:
    """Break ``ckpt`` in one way; returns the text the skip message must contain."""
    if how == "no_marker":
        (ckpt / "COMPLETE").unlink()
        return "no COMPLETE marker"
    if how == "truncated_state":
        data = (ckpt / "state.pt").read_bytes()
        (ckpt / "state.pt").write_bytes(data[: len(data) // 2])
        return "skipping corrupt checkpoint"
    (ckpt / "model" / "config.json").unlink()
    return "model/config.json missing"


@pytest.mark.parametrize("how", ["no_marker", "truncated_state", "missing_model"])
def test_a_broken_newest_checkpoint_is_skipped_and_resume_uses_the_one_before(how, overrides, tmp_path):
    cfg = load_config(None, [*overrides("sdpo", steps=4), "checkpoint_every=2", "keep_checkpoints=5"])
    straight, run = tmp_path / "straight", tmp_path / "run"
    train(cfg, straight)
    shutil.copytree(straight, run)
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_2", "step_4"]
    expected = _damage(ckpts / "step_4", how)
    (ckpts / "step_6.tmp-12345").mkdir()  # a save killed half-way

    messages: list[str] = []
    assert latest_checkpoint(run, log=messages.append) == ckpts / "step_2"
    assert any(expected in m and "step_4" in m for m in messages), messages

    result = train(cfg, run, resume=True)
    assert result.status == "completed" and result.last_step == 4
    assert _rows(run) == _rows(straight)
    assert not (ckpts / "step_6.tmp-12345").exists()
