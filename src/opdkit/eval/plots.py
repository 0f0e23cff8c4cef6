"""Plots of run directories that read at a glance: one line per method, the mean over its seeds, with a band.

``plot_runs([run_dirs...], out_dir)`` writes:

- ``training.png``: pass rate, total loss and gradient norm per step (each seed smoothed by a trailing
  ``SMOOTH``-step mean first);
- ``weights.png``: every ``weights/*_mean`` statistic logged (SCOPE's path weights, question weights);
- ``eval.png``: the held-out ``eval/*`` metrics at the steps they were measured (mean@k, pass@k, maj@k);
- ``question_weights.png`` and ``scope_weights.png``: the method-specific pictures from ``diagnostics.jsonl``
  (``eval.plots_methods``), when a run logged them.

Runs are grouped by their directory name without a trailing ``-seedN`` (the naming of ``opdkit demo`` and
``opdkit compare``): ``scope-seed0`` and ``scope-seed1`` are one line, "scope (2 seeds)"; the line is the mean
over the seeds at each step and the band spans their minimum to maximum (with 2-3 seeds a standard deviation
says little; the band shows every seed). A metric whose values equal an earlier one's in every run is drawn
once (``reward/mean`` = ``pass_rate/mean`` for 0/1 rewards; ``pass@1`` = ``mean@k``); the ``bootstrap_*``
evaluation variants (verl's resampled pass@k / maj@k, near the exact ones) are left out. A panel whose key no
run logged is left out. matplotlib is imported here only (Agg backend, no display).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRAINING_KEYS = ("pass_rate/mean", "reward/mean", "loss/total", "grad/norm")
SMOOTH = 5  # steps in the trailing mean of the per-step training curves
BAND = "band: min–max over seeds"
_SEED_SUFFIX = re.compile(r"-seed\d+$")


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file, skipping a line torn by a kill; [] when the file is absent."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of ``<run_dir>/metrics.jsonl``; a missing file names the run."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (is this a run directory?)")
    return read_jsonl(path)


@dataclass(frozen=True)
class RunGroup:
    """The seeds of one method: their metrics rows and ``diagnostics.jsonl`` rows, one list per seed."""

    label: str
    metrics: list[list[dict]]
    diagnostics: list[list[dict]]

    @property
    def legend(self) -> str:
        n = len(self.metrics)
        return self.label if n == 1 else f"{self.label} ({n} seeds)"


def group_label(run_dir: str | Path) -> str:
    """``runs/demo/scope-seed2`` -> ``scope``; a name without the suffix is its own group."""
    return _SEED_SUFFIX.sub("", Path(run_dir).name)


def group_runs(run_dirs: Sequence[str | Path]) -> list[RunGroup]:
    """Runs grouped by ``group_label`` in order of first appearance."""
    grouped: dict[str, list[Path]] = {}
    for d in run_dirs:
        grouped.setdefault(group_label(d), []).append(Path(d))
    return [
        RunGroup(label, [read_metrics(d) for d in dirs], [read_jsonl(d / "diagnostics.jsonl") for d in dirs])
        for label, dirs in grouped.items()
    ]


def series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``key`` over the rows that logged it as a number."""
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return np.array([p[0] for p in points], dtype=float), np.array([p[1] for p in points], dtype=float)


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """y[i] = mean(values[max(0, i − window + 1) .. i]) (window 1: unchanged)."""
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    i = np.arange(len(values))
    lo = np.maximum(0, i - window + 1)
    return (cumsum[i + 1] - cumsum[lo]) / (i + 1 - lo)


@dataclass(frozen=True)
class Band:
    """Per step present in any seed: the mean over the seeds that logged it, and their min and max."""

    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


def seed_band(per_seed: Sequence[tuple[np.ndarray, np.ndarray]]) -> Band:
    """Aggregate (steps, values) series of several seeds step by step (``Band``)."""
    by_step: dict[float, list[float]] = {}
    for steps, values in per_seed:
        for s, v in zip(steps, values):
            by_step.setdefault(float(s), []).append(float(v))
    steps = np.array(sorted(by_step))
    vals = [np.array(by_step[s]) for s in steps]
    return Band(
        steps,
        np.array([v.mean() for v in vals]),
        np.array([v.min() for v in vals]),
        np.array([v.max() for v in vals]),
    )


def distinct_keys(groups: Sequence[RunGroup], keys: Sequence[str]) -> list[str]:
    """``keys`` that some run logged, less those equal (same steps, same values) to an earlier kept key in
    every run."""
    kept: list[str] = []
    for key in keys:
        runs = [rows for g in groups for rows in g.metrics]
        if not any(len(series(rows, key)[0]) for rows in runs):
            continue
        if not any(all(_same(series(rows, key), series(rows, k)) for rows in runs) for k in kept):
            kept.append(key)
    return kept


def _same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    return a[0].shape == b[0].shape and bool(np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1]))


def draw_band(ax, band: Band, label: str, color=None) -> None:
    """The mean line (markers when sparse) and the min–max band."""
    marker = "o" if len(band.steps) < 12 else None
    (line,) = ax.plot(band.steps, band.mean, marker=marker, ms=3, label=label, color=color)
    if np.any(band.high > band.low):
        ax.fill_between(band.steps, band.low, band.high, color=line.get_color(), alpha=0.2, lw=0)


def new_figure(panels: int, cols: int = 2, width: float = 6.0):
    """A figure with ``panels`` axes (extra axes hidden) -> (figure, list of axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(cols, panels)
    nrows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(width * cols, 3.8 * nrows), squeeze=False)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    return fig, list(axes.flat)[:panels]


def save_figure(fig, path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _figure(groups: Sequence[RunGroup], keys: Sequence[str], path: Path, title: str, smooth: int):
    if not keys:
        return None
    fig, axes = new_figure(len(keys))
    for ax, key in zip(axes, keys):
        for g in groups:
            per_seed = [series(rows, key) for rows in g.metrics]
            per_seed = [(s, trailing_mean(v, smooth)) for s, v in per_seed if len(s)]
            if per_seed:
                draw_band(ax, seed_band(per_seed), g.legend)
        ax.set_title(key + (f" ({smooth}-step trailing mean)" if smooth > 1 else ""), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, f"{title} — line: mean over seeds; {BAND}")


def plot_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """Write the PNGs of the module docstring for ``run_dirs`` into ``out_dir``; returns the files written."""
    from opdkit.eval.plots_methods import plot_question_weights, plot_scope_weights

    groups = group_runs(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for g in groups for rows in g.metrics for r in rows for k in r})
    weight_keys = [k for k in keys if k.startswith("weights/") and k.endswith("_mean")]
    eval_keys = sorted(
        (k for k in keys if k.startswith("eval/") and not k.startswith(("eval/bootstrap", "eval/num_"))),
        key=lambda k: (not k.startswith("eval/mean@"), k),  # mean@k first, so pass@1 is the one dropped
    )
    written = [
        _figure(groups, distinct_keys(groups, TRAINING_KEYS), out / "training.png", "training", SMOOTH),
        _figure(groups, distinct_keys(groups, weight_keys), out / "weights.png", "method weights", 1),
        _figure(groups, distinct_keys(groups, eval_keys), out / "eval.png", "held-out evaluation", 1),
        plot_question_weights(groups, out / "question_weights.png"),
        plot_scope_weights(groups, out / "scope_weights.png"),
    ]
    return [p for p in written if p is not None]
