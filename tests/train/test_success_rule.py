"""Training decides success by the verifier's verdict (``Verdict.correct``), the rule of evaluation and of
PACED's offline pass, not by thresholding the reward (docs/algorithms.md §1.4)."""

from __future__ import annotations

import dataclasses

import torch

from opdkit.train import rollouts


def test_success_is_the_verdict_not_a_reward_threshold(step_setup, monkeypatch):
    real_verify = rollouts.verify_batch
    seen = []

    def continuous_scores(*args, **kwargs):
        # Same verdicts, but rewards 0.9 (correct) and 0.6 (wrong): a threshold at 0.5 would call every row a
        # success, the verdict keeps the wrong rows wrong.
        verdicts = [
            dataclasses.replace(v, score=0.9 if v.correct else 0.6) for v in real_verify(*args, **kwargs)
        ]
        seen.extend(verdicts)
        return verdicts

    monkeypatch.setattr(rollouts, "verify_batch", continuous_scores)
    _, batch, _ = step_setup("grpo")
    correct = [v.correct for v in seen]
    assert 0 < sum(correct) < len(correct), "the toy verifier gives a mixed batch"
    assert batch.success_N.tolist() == correct
    assert batch.rewards_N.tolist() == [torch.tensor(v.score).item() for v in seen]  # GRPO keeps raw rewards
