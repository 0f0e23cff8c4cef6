"""Evaluation with the papers' metrics: k samples per problem, verified, summarised per data source.

§8.1. For every problem, k samples at the evaluation temperature (SDPO family: 16 at T = 0.6,
top-p 0.95; SCOPE: 32) are verified; the summary reports, per data source and as the unweighted mean over
sources: ``mean@k`` (= avg@k), unbiased ``pass@k`` and ``pass@1``, exact ``maj@k``, and the labelled
bootstrap variants ``bootstrap_best@k`` / ``bootstrap_maj@k`` (verl's, SCOPE's "Pass@k").

    result = evaluate(model, tokenizer, examples, EvalSettings(k=16))
    write_eval(result, run_dir / "eval", "step_100")      # step_100.jsonl + summary.json
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from opdkit import metrics
from opdkit.data import Example
from opdkit.rewards import make_verifier, verify_batch
from opdkit.rollout import SamplingParams, encode_chats, sample


@dataclass(frozen=True)
class EvalSettings:
    k: int = 16
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 2048
    prompts_per_batch: int = 16  # each batch samples from seed + its first index
    seed: int = 0
    max_cache_tokens: int = 0  # key/value cache budget: a batch runs in chunks under it (same samples)


@dataclass(frozen=True)
class EvalResult:
    """Per-sample records (one dict per problem × sample) and the summary of ``summarize``."""

    records: list[dict[str, Any]]
    summary: dict[str, Any]


class VerifierCache:
    """One verifier object per (name, options), built on first use."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def get(self, example: Example) -> Any:
        options = example.verifier_options
        key = json.dumps([example.verifier, options], sort_keys=True)
        if key not in self._cache:
            self._cache[key] = make_verifier(example.verifier, **options)
        return self._cache[key]


def _records_for(
    examples: Sequence[Example], rollout: Any, k: int, verifiers: VerifierCache, rendered: Sequence[str]
) -> list[dict]:
    """One record per sample; ``rendered``: each example's prompt as the model saw it (chat template
    applied, special tokens kept), next to the messages it was rendered from."""
    records = []
    for p, ex in enumerate(examples):
        rows = range(p * k, (p + 1) * k)
        texts = [rollout.texts[i] for i in rows]
        truncated = [bool(rollout.truncated_N[i]) for i in rows]
        verdicts = verify_batch(verifiers.get(ex), texts, [ex.ground_truth] * k, truncated)
        for j, (i, v) in enumerate(zip(rows, verdicts)):
            records.append({
                "problem_id": ex.problem_id, "data_source": ex.data_source, "sample_index": j,
                "prompt": ex.prompt, "rendered_prompt": rendered[p], "completion": texts[j],
                "extracted_answer": v.pred,
                "correct": bool(v.correct), "reward": float(v.score), "feedback": v.feedback,
                "tokens": int(rollout.response_mask_N_T[i].sum()), "truncated": truncated[j],
            })  # fmt: skip
    return records


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    settings: EvalSettings,
    *,
    chat_kwargs: dict | None = None,
) -> EvalResult:
    """Sample ``settings.k`` completions per example, verify them and summarise (module docstring)."""
    params = SamplingParams(
        n=settings.k, temperature=settings.temperature, top_p=settings.top_p,
        top_k=settings.top_k, max_new_tokens=settings.max_new_tokens,
        max_cache_tokens=settings.max_cache_tokens,
    )  # fmt: skip
    verifiers = VerifierCache()
    records: list[dict] = []
    for start in range(0, len(examples), settings.prompts_per_batch):
        chunk = list(examples[start : start + settings.prompts_per_batch])
        prompt_ids = encode_chats(tokenizer, [ex.prompt for ex in chunk], **(chat_kwargs or {}))
        rollout = sample(model, tokenizer, prompt_ids, params, seed=settings.seed + start)
        rendered = tokenizer.batch_decode(prompt_ids, skip_special_tokens=False)
        records.extend(_records_for(chunk, rollout, settings.k, verifiers, rendered))
    return EvalResult(records=records, summary=summarize(records, settings.k))


def _source_metrics(problems: dict[str, list[dict]], k: int) -> dict[str, float]:
    correct = [[float(r["correct"]) for r in rows] for rows in problems.values()]
    preds = [[r["extracted_answer"] for r in rows] for rows in problems.values()]
    return {
        f"mean@{k}": metrics.mean_at_k(correct),
        f"pass@{k}": metrics.pass_at_k_mean(correct, k),
        "pass@1": metrics.pass_at_k_mean(correct, 1),
        f"maj@{k}": metrics.maj_at_k(preds, correct),
        f"bootstrap_best@{k}": metrics.bootstrap_best_at_k(correct, k),
        f"bootstrap_maj@{k}": metrics.bootstrap_maj_at_k(preds, correct, k),
        "num_problems": float(len(correct)),
    }


def summarize(records: Sequence[dict], k: int) -> dict[str, Any]:
    """Per data source: the §8.1 metrics (macro means over problems); ``average``: mean over sources."""
    by_source: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_source[r["data_source"]][r["problem_id"]].append(r)
    per_source = {src: _source_metrics(problems, k) for src, problems in sorted(by_source.items())}
    keys = next(iter(per_source.values())).keys() if per_source else []
    average = {key: sum(m[key] for m in per_source.values()) / len(per_source) for key in keys}
    return {"k": k, "by_source": per_source, "average": average}


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_eval(result: EvalResult, out_dir: Path, name: str) -> None:
    """``<out_dir>/<name>.jsonl`` (records) and ``<out_dir>/summary.json`` (summaries keyed by name)."""
    out_dir = Path(out_dir)
    _atomic_write(out_dir / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in result.records))
    summary_path = out_dir / "summary.json"
    summaries = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summaries[name] = result.summary
    _atomic_write(summary_path, json.dumps(summaries, indent=2) + "\n")
