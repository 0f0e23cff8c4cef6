"""One step's rollouts: sample G responses per question, verify them, recompute the old log-probs.

§1: each question drawn this step gets a fresh group id (the same dataset row drawn twice gets
two ids); its G rollouts are contiguous. Rewards and success come from each row's verifier: success is
the verdict's ``correct``, the one rule of training, evaluation and PACED's offline pass (§1.4).
``old_logp`` is the pre-update student's log-prob of each sampled token at the log-prob temperature (§2.2:
on-policy it equals the current log-prob); it is only computed when asked (``RolloutRequest.old_logprobs``),
else left None for the loss to use the current log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from opdkit.core.composition import question_pass_rates
from opdkit.rewards import verify_batch
from opdkit.rollout import SamplingParams, sample
from opdkit.train.batch import StepBatch, micro_batch_size
from opdkit.train.student import ForwardPath, old_logprobs


@dataclass(frozen=True)
class RolloutRequest:
    """Which questions, how to sample them, and how to score them."""

    example_indices: list[int]
    params: SamplingParams
    seed: int
    first_group_id: int
    logprob_temperature: float
    micro_batch_size: int
    forward: ForwardPath  # the run's forward path (``train.student.choose_forward``), for the old log-probs
    micro_batch_tokens: int = 0  # token budget of the old log-probs' forwards (``update.micro_batch_rows``)
    old_logprobs: bool = True  # False: leave old_logp_N_T None (one on-policy update; see StepBatch)


@dataclass(frozen=True)
class Rollouts:
    batch: StepBatch
    metrics: dict[str, float]


def collect_rollouts(
    model: torch.nn.Module, tokenizer: Any, data: Any, verifiers: Any, req: RolloutRequest
) -> Rollouts:
    """Sample, verify and score one step's rollouts (module docstring)."""
    examples = [data.train[i] for i in req.example_indices]
    prompt_ids = [data.train_prompt_ids[i] for i in req.example_indices]
    out = sample(model, tokenizer, prompt_ids, req.params, seed=req.seed, first_group_id=req.first_group_id)
    n = req.params.n
    verdicts = []
    for p, ex in enumerate(examples):
        rows = range(p * n, (p + 1) * n)
        verdicts.extend(verify_batch(
            verifiers.get(ex), [out.texts[i] for i in rows], [ex.ground_truth] * n,
            [bool(out.truncated_N[i]) for i in rows],
        ))  # fmt: skip
    rewards_N = torch.tensor([v.score for v in verdicts], dtype=torch.float32)
    device = next(model.parameters()).device
    batch = StepBatch(
        prompt_ids_N_P=out.prompt_ids_N_P.to(device),
        prompt_mask_N_P=out.prompt_mask_N_P.to(device),
        response_ids_N_T=out.response_ids_N_T.to(device),
        response_mask_N_T=out.response_mask_N_T.to(device),
        group_ids_N=out.group_ids_N.to(device),
        rewards_N=rewards_N.to(device),
        success_N=torch.tensor([v.correct for v in verdicts], dtype=torch.bool, device=device),
        old_logp_N_T=None,
        example_index_N=torch.tensor(req.example_indices, device=device).repeat_interleave(n),
        truncated_N=out.truncated_N.to(device),
        messages=[ex.prompt for ex in examples for _ in range(n)],
        response_texts=list(out.texts),
        feedback=[v.feedback for v in verdicts],
        preds=[v.pred for v in verdicts],
    )
    if req.old_logprobs:
        rows = micro_batch_size(batch, req.micro_batch_size, req.micro_batch_tokens)
        old = old_logprobs(req.forward, model, batch.sequences(), req.logprob_temperature, rows)
        batch = StepBatch(**{**batch.__dict__, "old_logp_N_T": old})
    return Rollouts(batch=batch, metrics=rollout_metrics(batch))


def rollout_metrics(batch: StepBatch) -> dict[str, float]:
    """reward/*, pass_rate/* (with the degenerate-group fractions) and response/* statistics."""
    p_P = question_pass_rates(batch.success_N, batch.group_ids_N).pass_rate_Q
    lengths = batch.response_mask_N_T.sum(dim=-1).float()
    return {
        "reward/mean": float(batch.rewards_N.mean()),
        "reward/std": float(batch.rewards_N.std(unbiased=False)),
        "pass_rate/mean": float(p_P.mean()),
        "pass_rate/all_wrong_fraction": float((p_P == 0).float().mean()),
        "pass_rate/all_correct_fraction": float((p_P == 1).float().mean()),
        "pass_rate/informative_fraction": float(((p_P > 0) & (p_P < 1)).float().mean()),
        "response/length_mean": float(lengths.mean()),
        "response/truncated_fraction": float(batch.truncated_N.float().mean()),
    }
