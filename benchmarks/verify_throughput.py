"""Math-verifier throughput over the MATH500 gold answers: one process vs the worker pool, from one run.

Two workloads, each timed in this process (``MathVerifier(workers=0)``: math-verify on the main thread,
bounded by an interval timer) and through the worker pool (``MathVerifier(workers=N)`` with
``verify_batch``, which runs the math-verify checks on N worker processes at once):

- ``mixed``: 1,000 completions, each of the 500 golds written as a model would ("... the final answer is
  \\boxed{<gold>}.") plus one wrong answer per problem (the next problem's gold). Correct golds are settled by
  the normalised-string fast path; most wrong ones need math-verify.
- ``math-verify``: the 500 golds checked against themselves with the fast path bypassed, so every verdict is a
  math-verify call (parse both sides, compare).

Worker start-up (a Python process importing math-verify, ~0.5 s each) happens before the timed part; the
in-process runs also warm math-verify up first. Prints verdicts/second and the pool/single ratio.

    PYTHONPATH=src python benchmarks/verify_throughput.py            # workers = CPU count, capped at 4
    PYTHONPATH=src python benchmarks/verify_throughput.py --workers 2 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

from opdkit.data import load_benchmark
from opdkit.rewards import MathVerifier, verify_batch
from opdkit.rewards.pool import default_pool_size, shared_pool


def rendered(answer: str) -> str:
    return f"Let me solve this step by step.\n...\nTherefore, the final answer is \\boxed{{{answer}}}."


def mixed_workload(golds: list[str]) -> tuple[list[str], list[str]]:
    completions = [rendered(g) for g in golds] + [
        rendered(golds[(i + 1) % len(golds)]) for i in range(len(golds))
    ]
    return completions, golds + golds


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best_of(repeat: int, fn) -> tuple[float, object]:
    return min((timed(fn) for _ in range(repeat)), key=lambda t: t[0])


def equivalences(verifier: MathVerifier, golds: list[str], threads: int) -> list[bool]:
    if threads <= 1:
        return [verifier.equivalent(g, g) for g in golds]
    with ThreadPoolExecutor(max_workers=threads) as executor:
        return list(executor.map(lambda g: verifier.equivalent(g, g), golds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=default_pool_size())
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per math-verify check")
    parser.add_argument("--repeat", type=int, default=1, help="time each workload this many times; best kept")
    args = parser.parse_args()

    golds = [e.ground_truth for e in load_benchmark("math500")]
    completions, truths = mixed_workload(golds)
    single = MathVerifier(workers=0, timeout_s=args.timeout)
    pooled = MathVerifier(workers=args.workers, timeout_s=args.timeout)

    single.equivalent("1", "1")  # import math-verify and build its grammar outside the timed part
    start_s, _ = timed(shared_pool(args.workers).start)
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f}")
    print(f"pool: {args.workers} workers started in {start_s:.2f} s (not timed below)")

    workloads = {
        "mixed": (len(completions), lambda v: [x.correct for x in verify_batch(v, completions, truths)]),
        "math-verify": (len(golds), lambda v: equivalences(v, golds, v.workers or 1)),
    }
    print(f"{'workload':<12} {'verdicts':>8} {'single v/s':>11} {'pool v/s':>9} {'pool/single':>12}  agree")
    for name, (n, run) in workloads.items():
        single_s, single_out = best_of(args.repeat, lambda r=run: r(single))
        pool_s, pool_out = best_of(args.repeat, lambda r=run: r(pooled))
        agree = sum(a == b for a, b in zip(single_out, pool_out))
        ratio = single_s / pool_s
        print(f"{name:<12} {n:>8} {n / single_s:>11.1f} {n / pool_s:>9.1f} {ratio:>11.2f}x  {agree}/{n}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (a pool only gains when CPUs are idle)")


if __name__ == "__main__":
    main()
