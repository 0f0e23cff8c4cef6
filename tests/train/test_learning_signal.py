"""Learning signal: from the warm-started tiny student, a few dozen steps of ``opd`` (strong
teacher) and of ``grpo`` raise the held-out pass rate by a margin well outside the evaluation's seed noise.

The real loop, the real presets (``tiny/<method>``), the real warm start (trained once per session into a
temporary cache, ~2-4 minutes on a 2-core CPU). Marked slow; still runs in CI.

The noise yardstick is measured, not assumed: the warm-started student is evaluated at step 0 with three
sampling seeds (same problems, same k; seed 0 is the runs' own step 0). Their mean is the starting point and
their sample standard deviation s the noise of one evaluation. A method passes when its final mean@k exceeds
that mean by at least ``MARGIN`` and by at least two standard deviations of the difference, 2·s·sqrt(1 + 1/3)
(one evaluation against the mean of three).

An earlier version compared with the run's own step-0 number and asked for twice the range of the three; a
change of the sampler's random stream (commit "rollout: inverse-CDF token draw") moved that single step-0
draw from the middle of the spread to its top (0.467, where five seeds gave 0.367-0.467, mean 0.42), which
is the noise the mean of three removes.
(Measured with warm start v2, 2-core AMD EPYC, seeds 0-2 at step 0: 0.492, 0.434, 0.451, so mean 0.459,
s 0.030; opd -> 0.625 in 30 steps, grpo -> 0.641 in 40. With warm start v1 on a Xeon: mean 0.423, s 0.051;
opd -> 0.566, grpo -> 0.637.)
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import pytest

from opdkit.train.config import load_config
from opdkit.train.loop import train

pytestmark = pytest.mark.slow

MARGIN = 0.08  # absolute mean@k gain required, whatever the measured noise


def _eval_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval/mean@4" in r]


def _run(method: str, cache: Path, out: Path, *extra: str) -> list[dict]:
    cfg = load_config(f"tiny/{method}", [f"warmstart.cache_dir={cache}", *extra])
    result = train(cfg, out, overwrite=True)
    assert result.status == "completed"
    return _eval_rows(out)


@dataclass(frozen=True)
class StepZero:
    """mean and sample standard deviation of the step-0 mean@4 over three evaluation seeds."""

    mean: float
    std: float


@pytest.fixture(scope="module")
def step_zero(warm_cache: Path, tmp_path_factory) -> StepZero:
    """Step-0 mean@4 of the warm-started student over three sampling seeds (the step-0 row, evaluated before
    the first update; steps=1 because a run must train at least one step)."""
    values = []
    for seed in (0, 1, 2):
        rows = _run("opd", warm_cache, tmp_path_factory.mktemp(f"noise{seed}"), "steps=1", f"seed={seed}")
        values.append(rows[0]["eval/mean@4"])
    print(f"step-0 mean@4 over seeds 0-2: {values}")
    return StepZero(statistics.mean(values), statistics.stdev(values))


@pytest.mark.parametrize("method, steps", [("opd", 30), ("grpo", 40)])
def test_a_few_dozen_steps_raise_the_held_out_pass_rate(method, steps, warm_cache, step_zero, tmp_path):
    rows = _run(method, warm_cache, tmp_path / method, f"steps={steps}", f"eval.every={steps}")
    after = rows[-1]["eval/mean@4"]
    required = max(MARGIN, 2 * step_zero.std * math.sqrt(1 + 1 / 3))
    print(f"{method}: mean@4 {step_zero.mean:.3f} (s {step_zero.std:.3f}) -> {after:.3f} after {steps} steps")
    assert rows[-1]["step"] == steps
    assert after - step_zero.mean >= required, (step_zero, after, required)
