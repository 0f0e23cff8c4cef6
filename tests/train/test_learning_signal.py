"""Learning signal (issue 4): from the warm-started tiny student, a few dozen steps of ``opd`` (strong
teacher) and of ``grpo`` raise the held-out pass rate by a margin well outside the evaluation's seed noise.

The real loop, the real presets (``tiny/<method>``), the real warm start (trained once per session into a
temporary cache, ~2-4 minutes on a 2-core CPU). Marked slow; still runs in CI.

The noise yardstick is measured, not assumed: the same warm-started student evaluated with two more sampling
seeds (same problems, same k) gives the spread a step-0 number has by chance alone. The range of three draws
is about 1.7 standard deviations, so a gain of twice that range is about 3.4 sigma. A method passes when its
final mean@k exceeds its own step-0 mean@k by at least ``MARGIN`` and by at least twice the measured range.
(Measured here: range 0.053; opd 0.426 -> 0.590 in 30 steps, grpo 0.426 -> 0.594 in 40.)
"""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def noise(warm_cache: Path, tmp_path_factory) -> float:
    """Spread of step-0 mean@4 over three sampling seeds of the evaluation (no training: steps=0)."""
    values = []
    for seed in (0, 1, 2):
        rows = _run("opd", warm_cache, tmp_path_factory.mktemp(f"noise{seed}"), "steps=0", f"seed={seed}")
        values.append(rows[0]["eval/mean@4"])
    return max(values) - min(values)


@pytest.mark.parametrize("method, steps", [("opd", 30), ("grpo", 40)])
def test_a_few_dozen_steps_raise_the_held_out_pass_rate(method, steps, warm_cache, noise, tmp_path):
    rows = _run(method, warm_cache, tmp_path / method, f"steps={steps}", f"eval.every={steps}")
    before, after = rows[0]["eval/mean@4"], rows[-1]["eval/mean@4"]
    print(f"{method}: mean@4 {before:.3f} -> {after:.3f} after {steps} steps (noise range {noise:.3f})")
    assert rows[-1]["step"] == steps
    assert after - before >= max(MARGIN, 2 * noise), (before, after, noise)
