"""The demo: what opdkit is for, on a laptop CPU in minutes.

1. Warm-start a strong teacher and a 20-50 % student on the default synthetic task (cached; ``warmstart``).
2. Train the student with ``opd`` vs ``scope`` (external teacher) and ``sdpo`` vs ``sc_sdpo`` (self-teacher),
   every method from the same student, with the same seeds and step budget (presets ``tiny/<method>``).
3. Evaluate before and after on the warm start's held-out problems (mean@k, pass@k, maj@k), print a comparison
   table with the spread over seeds and a closing note with each pair's paired difference, bootstrap interval
   and verdict (``pair_comparisons``), and write the run directories and plots under ``runs/demo/``.

Runs go to a pool of worker processes (one intra-op thread each), so a 2-core machine runs two at once.

    opdkit demo            # ~3 minutes on a fresh 2-core CPU (45 s of them the warm start, cached after)
    opdkit demo --quick    # ~1.5 minutes: 2 seeds, 20 steps, a smaller evaluation
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAIRS: tuple[tuple[str, str], ...] = (("opd", "scope"), ("sdpo", "sc_sdpo"))


@dataclass(frozen=True)
class DemoPlan:
    """What the demo runs: methods × seeds, each a ``tiny/<method>`` preset with ``overrides``."""

    methods: tuple[str, ...] = tuple(m for pair in PAIRS for m in pair)
    seeds: tuple[int, ...] = (0, 1, 2)
    overrides: tuple[str, ...] = ()
    workers: int = 2

    @classmethod
    def standard(cls, quick: bool = False, workers: int | None = None) -> DemoPlan:
        workers = workers or max(1, min(4, os.cpu_count() or 1))
        quick_overrides = ("steps=20", "eval.every=10", "eval.num_problems=64")
        if quick:  # 2 seeds, 20 steps: the warm start (~45 s on a fresh machine) is half of it
            return cls(seeds=(0, 1), overrides=quick_overrides, workers=workers)
        return cls(workers=workers)


@dataclass(frozen=True)
class DemoResult:
    """Where everything went, the comparison table (markdown) and the per-run final summaries."""

    out_dir: Path
    table: str
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


def _run_one(method: str, seed: int, overrides: Sequence[str], out_dir: str) -> dict[str, Any]:
    """One training run in a worker process -> its metrics rows (a picklable summary)."""
    import torch

    from opdkit.train.config import load_config
    from opdkit.train.loop import train

    torch.set_num_threads(1)
    cfg = load_config(f"tiny/{method}", [f"seed={seed}", *overrides])
    run_dir = Path(out_dir) / f"{method}-seed{seed}"
    start = time.perf_counter()
    result = train(cfg, run_dir, overwrite=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    return {
        "method": method, "seed": seed, "status": result.status, "run_dir": str(run_dir),
        "before": _eval_of(evals[0]) if evals else {}, "after": _eval_of(evals[-1]) if evals else {},
        "seconds": time.perf_counter() - start,
    }  # fmt: skip


def _eval_of(row: dict[str, Any]) -> dict[str, float]:
    return {k.removeprefix("eval/"): v for k, v in row.items() if k.startswith("eval/")}


def _prepare(plan: DemoPlan, log: Any) -> None:
    """Warm-start once in this process so the workers find the models in the cache."""
    import torch

    from opdkit.train.config import load_config
    from opdkit.train.setup import load_models, resolve_device

    torch.set_num_threads(1)
    start = time.perf_counter()
    load_models(load_config(f"tiny/{plan.methods[0]}", list(plan.overrides)), resolve_device("cpu"))
    log(f"warm start ready ({time.perf_counter() - start:.0f} s)")


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def comparison_table(runs: list[dict[str, Any]]) -> str:
    """Markdown: per method, each metric before -> after (mean ± std over seeds)."""
    # pass@1 is mean@k by definition (unbiased estimator at k=1): one column, not two.
    skip = ("bootstrap", "num_", "pass@1")
    keys = sorted({k for r in runs for k in r["after"] if not k.startswith(skip)})
    lines = [
        "| method | seeds | " + " | ".join(f"{k} before → after" for k in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        cells = [
            f"{_mean_spread([r['before'][k] for r in mine if k in r['before']])} → "
            f"{_mean_spread([r['after'][k] for r in mine if k in r['after']])}"
            for k in keys
        ]
        lines.append(f"| {method} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pair_comparisons(runs: list[dict[str, Any]], confidence: float = 0.95) -> str:
    """The closing note: per pair of ``PAIRS``, the second method minus the first on mean@k after training,
    paired by seed, with its bootstrap interval, sign-flip p and verdict (``core.paired``); '' below 2 seeds.
    """
    from opdkit.core.paired import compare_paired

    lines = []
    for a, b in PAIRS:
        after = {(r["method"], r["seed"]): r["after"] for r in runs}
        seeds = sorted(s for m, s in after if m == a and (b, s) in after)
        key = (
            next((k for k in after.get((a, seeds[0]), {}) if k.startswith("mean@")), None) if seeds else None
        )
        if key is None or len(seeds) < 2:
            continue
        r = compare_paired([after[(b, s)][key] - after[(a, s)][key] for s in seeds], confidence=confidence)
        verdict = r.verdict.replace("B", b, 1).replace("A", a, 1) if r.verdict.startswith("B ") else r.verdict
        lines.append(
            f"- {b} − {a}, {key} after, {r.n} seeds paired: {r.mean:+.3f}, {confidence:.0%} bootstrap "
            f"interval [{r.low:+.3f}, {r.high:+.3f}], sign-flip p = {r.p_value:.3g}: {verdict} ({r.reason})"
        )
    return "\n".join(lines)


def run_demo(out_dir: str | Path = "runs/demo", plan: DemoPlan | None = None, log: Any = print) -> DemoResult:
    """Run the plan (module docstring); returns the table, also written to ``<out_dir>/summary.md``."""
    from opdkit.eval.plots import plot_runs

    plan = plan or DemoPlan.standard()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    _prepare(plan, log)
    jobs = [(m, s) for s in plan.seeds for m in plan.methods]
    with ProcessPoolExecutor(plan.workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_run_one, m, s, plan.overrides, str(out)) for m, s in jobs]
        runs = []
        for (m, s), fut in zip(jobs, futures):
            runs.append(fut.result())
            log(f"{m} seed {s}: {runs[-1]['status']} in {runs[-1]['seconds']:.0f} s")
    for a, b in PAIRS:
        dirs = [r["run_dir"] for r in runs if r["method"] in (a, b)]
        plot_runs(dirs, out / "plots" / f"{a}_vs_{b}")
    table = comparison_table(runs)
    notes = pair_comparisons(runs)
    table = f"{table}\n\n{notes}" if notes else table
    seconds = time.perf_counter() - start
    (out / "summary.md").write_text(f"{table}\n\nwall time: {seconds:.0f} s\n")
    (out / "summary.json").write_text(json.dumps(runs, indent=2))
    return DemoResult(
        out_dir=out, table=table, runs={f"{r['method']}-{r['seed']}": r for r in runs}, seconds=seconds
    )
