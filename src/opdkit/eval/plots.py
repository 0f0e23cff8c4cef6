"""Curves from ``metrics.jsonl``: several runs overlaid, one PNG per panel group.

``plot_runs([run_a, run_b], out_dir)`` writes:

- ``training.png``: pass rate, reward, total loss and gradient norm per step;
- ``weights.png``: every ``weights/*_mean`` statistic logged (SCOPE's path weights, question weights);
- ``eval.png``: the held-out ``eval/*`` metrics at the steps they were measured (mean@k, pass@k, maj@k).

A panel whose key no run logged is left out. matplotlib is imported here only (Agg backend, no display).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

TRAINING_KEYS = ("pass_rate/mean", "reward/mean", "loss/total", "grad/norm")


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of ``<run_dir>/metrics.jsonl``; a missing file names the run."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (is this a run directory?)")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [float(p[1]) for p in points]


def _figure(runs: dict[str, list[dict]], keys: Sequence[str], path: Path, title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(_series(rows, k)[0] for rows in runs.values())]
    if not keys:
        return None
    cols = min(2, len(keys))
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 3.6 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for label, rows in runs.items():
            steps, values = _series(rows, key)
            if steps:
                ax.plot(steps, values, marker="o" if len(steps) < 12 else None, ms=3, label=label)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    names = [Path(d).name for d in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [str(d) for d in run_dirs]


def plot_runs(run_dirs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """Write the PNGs of the module docstring for ``run_dirs`` into ``out_dir``; returns the files written."""
    dirs = [Path(d) for d in run_dirs]
    runs = {label: read_metrics(d) for label, d in zip(_labels(dirs), dirs)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for rows in runs.values() for r in rows for k in r})
    weight_keys = [k for k in keys if k.startswith("weights/") and k.endswith("_mean")]
    eval_keys = [k for k in keys if k.startswith("eval/")]
    written = [
        _figure(runs, TRAINING_KEYS, out / "training.png", "training"),
        _figure(runs, weight_keys, out / "weights.png", "method weights"),
        _figure(runs, eval_keys, out / "eval.png", "held-out evaluation"),
    ]
    return [p for p in written if p is not None]
