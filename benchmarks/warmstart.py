"""Measure the warm start: time, the student's and teacher's pass rates, and the self-teacher's context gain.

Runs ``opdkit.warmstart.warm_start`` from scratch (a fresh temporary cache) for each seed and prints one
JSON line per seed plus a summary. Wall time depends on what else runs on the machine; CPU time of this
process is printed beside it (on an otherwise idle core the two agree).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/warmstart.py --seeds 0 1
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/warmstart.py --set optim.lr=1e-3 mix.feedback=0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

import torch

from opdkit.warmstart import WarmStartConfig, WarmStartJob, warm_start


def override(config: object, dotted: str, value: str) -> object:
    """``config`` with the field at ``dotted`` (e.g. ``optim.lr``) replaced by ``value`` parsed as JSON."""
    head, _, rest = dotted.partition(".")
    current = getattr(config, head)
    new = override(current, rest, value) if rest else json.loads(value)
    return dataclasses.replace(config, **{head: new})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        config = WarmStartConfig(seed=seed)
        for item in args.set:
            key, _, value = item.partition("=")
            config = override(config, key, value)
        wall, cpu = time.perf_counter(), time.process_time()
        with tempfile.TemporaryDirectory() as cache:
            job = WarmStartJob(config=dataclasses.replace(config, cache_dir=cache))
            result = warm_start(job, log=None if args.quiet else print)
        report = dataclasses.asdict(result.report)
        report.pop("probes")
        row = {
            "seed": seed,
            "wall_s": round(time.perf_counter() - wall, 1),
            "cpu_s": round(time.process_time() - cpu, 1),
        }
        rows.append(row | report)
        print(json.dumps(rows[-1]), flush=True)
    keys = ["wall_s", "cpu_s", "student_pass_rate", "teacher_pass_rate", "student_demo_pass_rate",
            "student_feedback_pass_rate", "student_step", "teacher_step"]  # fmt: skip
    for key in keys:
        values = [r[key] for r in rows]
        print(
            f"{key:28s} " + " ".join(f"{v:8.3f}" for v in values) + f"   mean {sum(values) / len(values):.3f}"
        )


if __name__ == "__main__":
    main()
