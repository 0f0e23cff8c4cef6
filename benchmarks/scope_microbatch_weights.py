"""How much weight SCOPE's MLE path keeps, relative to its PG path, under the released code's per-micro-batch
token means (``method.loss_averaging: microbatch``) versus opdkit's default mini-batch means.

The released scripts run 256 prompts × 8 rollouts on 8 GPUs: 256 sequences per GPU, packed into dynamic
micro-batches of at most 16,384 tokens (``core.microbatch.balanced_micro_batches``). Each micro-batch
takes the PG token mean over all its tokens and the MLE token mean over its correct rows' tokens, scaled by
its share of the rows. A micro-batch with no correct rollout adds nothing to the MLE path, so the MLE
path's total weight is Σ_b (n_b/N)·1[b holds a correct row] (``micro_batch_mass``) while the PG path keeps
1; with mini-batch means both are 1. The ratio printed is therefore the released code's effective MLE weight
relative to PG, as a fraction of opdkit's.

Simulation: response lengths uniform in [1,000, 12,000] tokens (prompt tokens left out), each rollout
correct with probability p independently, 200 draws per p. Pure arithmetic on token counts: no model.

    python benchmarks/scope_microbatch_weights.py [--draws 200] [--rows 256] [--budget 16384]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from opdkit.core.microbatch import balanced_micro_batches, micro_batch_mass

CORRECT_FRACTIONS = (0.1, 0.3, 0.5, 0.8)


def mle_weight_ratio(lengths: list[int], correct: list[bool], budget: int) -> float:
    """The released averaging's MLE/PG weight over opdkit's (module docstring) for one mini-batch."""
    parts = balanced_micro_batches(lengths, budget)
    width = max(lengths)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    mle = micro_batch_mass(parts, mask & torch.tensor(correct)[:, None])
    pg = micro_batch_mass(parts, mask)
    return mle / pg


def simulate(p: float, draws: int, rows: int, budget: int, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(draws):
        lengths = torch.randint(1000, 12001, (rows,), generator=g).tolist()
        correct = (torch.rand(rows, generator=g) < p).tolist()
        if any(correct):
            out.append(mle_weight_ratio(lengths, correct, budget))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--budget", type=int, default=16384)
    args = parser.parse_args()
    print("| correct rollouts | MLE weight relative to PG, released / opdkit (mean ± sd) |")
    print("|---|---|")
    for p in CORRECT_FRACTIONS:
        ratios = simulate(p, args.draws, args.rows, args.budget)
        print(f"| {p:.0%} | {statistics.mean(ratios):.2f} ± {statistics.stdev(ratios):.2f} |")


if __name__ == "__main__":
    main()
