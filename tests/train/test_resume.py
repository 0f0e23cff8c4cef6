"""Kill and resume loses nothing (docs/architecture.md "Reliability").

A run killed with SIGKILL after its step-3 checkpoint and resumed to step 6 logs the same metrics rows
and ends with the same weights as a run of 6 steps straight (CPU, same seed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from opdkit.train import load_config, train

RUNNER = """
import json, sys
sys.path.insert(0, {here!r})
import toy_verifier
toy_verifier.register()
from opdkit.train import load_config, train
train(load_config(None, json.loads(sys.argv[1])), sys.argv[2], resume=sys.argv[3] == "resume")
"""


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _wait_for_step(proc: subprocess.Popen, run: Path, step: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and any(
            json.loads(l)["step"] >= step for l in metrics.read_text().splitlines() if l
        ):
            return
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    raise TimeoutError(f"step {step} never logged")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sdpo", "scope"])
def test_sigkill_then_resume_reproduces_the_straight_run(method, overrides, tmp_path):
    cfg = [*overrides(method, steps=6), "checkpoint_every=3", "keep_checkpoints=5", "rollout.n=8",
           "rollout.max_new_tokens=12"]  # fmt: skip
    straight = tmp_path / "straight"
    train(load_config(None, cfg), straight)

    killed = tmp_path / "killed"
    script = RUNNER.format(here=str(Path(__file__).parent))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(cfg), str(killed), "fresh"], env=env)
    try:
        _wait_for_step(proc, killed, 4)
        proc.send_signal(signal.SIGKILL)  # no clean exit: no finally blocks, no flush
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (killed / "checkpoints" / "step_3" / "COMPLETE").exists()
    assert not (killed / "checkpoints" / "step_6").exists(), "killed too late to test a resume"

    subprocess.run(
        [sys.executable, "-c", script, json.dumps(cfg), str(killed), "resume"], env=env, check=True
    )

    assert _rows(killed) == _rows(straight)
    a = load_file(str(straight / "checkpoints" / "step_6" / "model" / "model.safetensors"))
    b = load_file(str(killed / "checkpoints" / "step_6" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
