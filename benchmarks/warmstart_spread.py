"""How much the warm start's step counts depend on the processor: a grid of seeds x threads x perturbation.

Another processor rounds float32 sums differently (other SIMD widths, other reduction orders), so the same
recipe with the same seed follows a slightly different path. Its proxies here: the number of intra-op threads
(1 or 2; a different split of each reduction), and a perturbation of every initial weight at float32 rounding
level, w <- w * (1 + 2^-23 u) with u ~ U[-1, 1] drawn from a seeded generator. Each grid cell is a fresh
process (``OMP_NUM_THREADS`` set per cell) warm-starting into a temporary cache; it prints one row per cell
and, for each step count, min / median / max and the spread (max - min) / median.

Step counts are the measure (they do not depend on what else runs on the machine); wall times are upper bounds
on a shared machine.

    PYTHONPATH=src python benchmarks/warmstart_spread.py --jobs 3      # 3 seeds x {1, 2} threads x {off, on}
    PYTHONPATH=src python benchmarks/warmstart_spread.py --seeds 0 --threads 1 --perturb off   # one cell
    PYTHONPATH=src python benchmarks/warmstart_spread.py --set optim.lr=0.01   # a variant of the recipe
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROUNDING = 2.0**-23  # float32's relative rounding step near 1 (its machine epsilon)
STUDENT_BAND = (0.20, 0.50)


def override(config: object, dotted: str, value: str) -> object:
    """``config`` with the field at ``dotted`` (e.g. ``optim.lr``) replaced by ``value`` parsed as JSON."""
    head, _, rest = dotted.partition(".")
    new = override(getattr(config, head), rest, value) if rest else json.loads(value)
    return dataclasses.replace(config, **{head: new})


def perturbed(build, seed: int):
    """``build`` (``build_tiny_model``) with every weight multiplied by 1 + 2^-23 u, u ~ U[-1, 1] (seeded)."""
    import torch

    def build_perturbed(*args, **kwargs):
        model = build(*args, **kwargs)
        generator = torch.Generator().manual_seed(10_000 + seed)
        with torch.no_grad():
            for param in model.parameters():
                u = torch.rand(param.shape, generator=generator, dtype=torch.float64) * 2 - 1
                param.copy_((param.double() * (1 + ROUNDING * u)).to(param.dtype))
        return model

    return build_perturbed


def run_cell(seed: int, perturb: bool, sets: list[str]) -> dict:
    """One warm start from scratch in this process -> its row (step counts, pass rates, seconds)."""
    import torch

    import opdkit.warmstart.run as run
    from opdkit.warmstart import WarmStartConfig, WarmStartJob, warm_start

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    config = WarmStartConfig(seed=seed)
    for item in sets:
        key, _, value = item.partition("=")
        config = override(config, key, value)
    if perturb:
        run.build_tiny_model = perturbed(run.build_tiny_model, seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        job = WarmStartJob(config=dataclasses.replace(config, cache_dir=cache))
        tag = f"[seed {seed} threads {torch.get_num_threads()} perturb {'on' if perturb else 'off'}]"
        report = warm_start(job, log=lambda line: print(tag, line, file=sys.stderr, flush=True)).report
    probes = report.probes
    in_band = next((p["step"] for p in probes if p["pass_rate"] >= STUDENT_BAND[0]), None)
    return {
        "seed": seed, "threads": torch.get_num_threads(), "perturb": perturb,
        "band_step": in_band, "student_step": report.student_step, "teacher_step": report.teacher_step,
        "student": round(report.student_pass_rate, 3), "teacher": round(report.teacher_pass_rate, 3),
        "demo": round(report.student_demo_pass_rate, 3), "wall_s": round(time.perf_counter() - start, 1),
        "probes": " ".join(f"{p['step']}:{p['pass_rate']:.2f}" for p in probes),
    }  # fmt: skip


def spread(values: list[float]) -> str:
    """'min / median / max, spread (max - min) / median' of ``values``."""
    mid = statistics.median(values)
    relative = f"{(max(values) - min(values)) / mid:.0%}" if mid else "n/a (median 0)"
    return f"{min(values):g} / {mid:g} / {max(values):g}, spread {relative}"


def _run_cell(seed: int, threads: int, perturb: str, sets: list[str]) -> dict | None:
    """One grid cell in a fresh process with ``threads`` intra-op threads -> its row (printed), or None."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                        "OMP_WAIT_POLICY": "PASSIVE"}  # fmt: skip
    cmd = [sys.executable, str(Path(__file__)), "--cell", str(seed), perturb, "--set", *sets]
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)  # progress: stderr
    if out.returncode:
        print(f"seed {seed} threads {threads} perturb {perturb} failed (its stderr is above)", flush=True)
        return None
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--perturb", choices=["off", "on"], nargs="+", default=["off", "on"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="WarmStartConfig overrides")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at once (step counts do not change)")
    parser.add_argument("--cell", nargs=2, metavar=("SEED", "PERTURB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(run_cell(int(args.cell[0]), args.cell[1] == "on", args.set)), flush=True)
        return
    cells = [
        (seed, threads, perturb)
        for seed in args.seeds
        for threads in args.threads
        for perturb in args.perturb
    ]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = [row for row in pool.map(lambda cell: _run_cell(*cell, args.set), cells) if row is not None]
    if not rows:
        return
    print(f"\n{len(rows)} runs; step counts min / median / max and spread (max - min) / median:")
    for key in ("band_step", "student_step", "teacher_step"):
        values = [r[key] for r in rows if r[key] is not None]
        print(f"  {key:13s} {spread(values) if values else 'never reached'}")
    for key in ("student", "teacher", "demo"):
        print(f"  {key:13s} pass rate {spread([r[key] for r in rows])}")
    print(f"  wall time     {spread([r['wall_s'] for r in rows])} (s; an upper bound on a shared machine)")


if __name__ == "__main__":
    main()
