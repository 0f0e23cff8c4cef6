"""How much the demo's table depends on the machine: the whole demo under the warm start's processor proxies.

Another processor rounds float32 sums differently, so its warm start follows another path and hands the
methods another student. This runs ``opdkit demo`` (its standard plan, two workers) once per variant, each
with its own empty warm-start cache, the variants being the proxies of ``warmstart_spread.py``: the warm
start's seed and a perturbation of its initial weights at float32 rounding level (``--perturb on``). It prints
each variant's wall time and warm-start time, the per-method mean@k before -> after, and over all variants
each method's range: the range a README can state for "the table on another machine".

    PYTHONPATH=src python benchmarks/demo_spread.py                       # seed 0, perturbation off and on
    PYTHONPATH=src python benchmarks/demo_spread.py --warm-seeds 0 1 --perturb off
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from warmstart_spread import perturbed  # the same perturbation as the warm-start grid


def run_variant(warm_seed: int, perturb: bool, out: Path) -> dict:
    """One full demo with a fresh warm start (``warm_seed``, perturbed or not) -> per-method mean@k."""
    import torch

    import opdkit.warmstart.run as run
    from opdkit.recipes.demo import DemoPlan, run_demo

    torch.set_num_threads(1)
    original = run.build_tiny_model
    if perturb:
        run.build_tiny_model = perturbed(original, warm_seed)
    try:
        with tempfile.TemporaryDirectory() as cache:
            standard = DemoPlan.standard(workers=2)
            overrides = (f"warmstart.cache_dir={cache}", f"warmstart.seed={warm_seed}")
            plan = DemoPlan(methods=standard.methods, seeds=standard.seeds, workers=2, overrides=overrides)
            lines: list[str] = []
            start = time.perf_counter()
            result = run_demo(out, plan, log=lambda line: (lines.append(line), print(line, flush=True)))
    finally:
        run.build_tiny_model = original
    warm = next((line for line in lines if line.startswith("warm start ready")), "")
    methods: dict[str, dict[str, list[float]]] = {}
    for r in result.runs.values():
        key = next(k for k in r["after"] if k.startswith("mean@"))
        entry = methods.setdefault(r["method"], {"before": [], "after": []})
        entry["before"].append(r["before"][key])
        entry["after"].append(r["after"][key])
    return {
        "warm_seed": warm_seed, "perturb": perturb, "wall_s": round(time.perf_counter() - start, 1),
        "warm_start": warm, "mean_at_k": methods, "table": result.table,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--perturb", choices=["off", "on"], nargs="+", default=["off", "on"])
    parser.add_argument("--output", default="runs/demo_spread")
    args = parser.parse_args()
    rows = []
    for seed in args.warm_seeds:
        for perturb in args.perturb:
            row = run_variant(seed, perturb == "on", Path(args.output) / f"warm{seed}-perturb-{perturb}")
            print(json.dumps({k: v for k, v in row.items() if k != "table"}), flush=True)
            print(row["table"], flush=True)
            rows.append(row)
    print(f"\n{len(rows)} demos; per method, the seed-mean of mean@k over variants (min - max):")
    for method in rows[0]["mean_at_k"]:
        before = [statistics.mean(r["mean_at_k"][method]["before"]) for r in rows]
        after = [statistics.mean(r["mean_at_k"][method]["after"]) for r in rows]
        span = f"before {min(before):.3f}-{max(before):.3f}  after {min(after):.3f}-{max(after):.3f}"
        print(f"  {method:8s} {span}")
    print(f"  wall time {min(r['wall_s'] for r in rows):.0f}-{max(r['wall_s'] for r in rows):.0f} s")


if __name__ == "__main__":
    main()
