"""Memory options change memory, not the run: a rollout cache budget, a micro-batch token budget and
activation checkpointing give the same metrics (exactly, or up to float rounding) as a run without them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from opdkit.train import load_config, train
from opdkit.train.batch import StepBatch, micro_batch_size


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _run(overrides, tmp_path: Path, name: str, *extra: str) -> list[dict]:
    cfg = load_config(None, [*overrides("sdpo", steps=2), "eval.at_start=true", *extra])
    return _rows(train(cfg, tmp_path / name).run_dir)


def _close(a: list[dict], b: list[dict], rel: float, skip: tuple[str, ...] = ()) -> None:
    assert [r.keys() for r in a] == [r.keys() for r in b]
    for ra, rb in zip(a, b):
        for k, v in ra.items():
            if k in skip:
                continue
            if isinstance(v, float):
                assert rb[k] == pytest.approx(v, rel=rel, abs=1e-6), k
            else:
                assert rb[k] == v, k


def test_rollout_cache_budget_and_micro_batch_tokens_leave_the_run_unchanged(overrides, tmp_path):
    plain = _run(overrides, tmp_path, "plain")
    # a 1-token cache budget: one question (4 rollouts) per chunk in rollouts and evaluation alike
    assert _run(overrides, tmp_path, "chunked", "rollout.kv_cache_tokens=1", "eval.batch_size=16") == plain
    # a 1-token micro-batch budget: one row per forward/backward; the micro-batch losses sum to the whole
    # batch's (loss/total) and so do the gradients (grad/norm); the other loss/* parts are means over
    # micro-batches of per-micro-batch statistics, which depend on the split by construction
    micro = _run(overrides, tmp_path, "micro", "optim.micro_batch_tokens=1")
    parts = {k for r in plain for k in r if k.startswith("loss/") and k != "loss/total"}
    _close(plain, micro, rel=1e-4, skip=tuple(parts))


@pytest.mark.slow
def test_activation_checkpointing_gives_the_same_run(overrides, tmp_path):
    plain = _run(overrides, tmp_path, "plain")
    _close(plain, _run(overrides, tmp_path, "ckpt", "model.activation_checkpointing=true"), rel=1e-4)


def test_micro_batch_size_from_a_token_budget():
    ids = torch.zeros(8, 10, dtype=torch.long)  # P = 10 prompt columns
    resp = torch.zeros(8, 6, dtype=torch.long)  # T = 6 response columns: 16 tokens a row
    batch = StepBatch(ids, ids, resp, resp, torch.zeros(8), torch.zeros(8), torch.zeros(8), None,
                      torch.zeros(8), torch.zeros(8))  # fmt: skip
    assert micro_batch_size(batch, 0, 0) == 8  # no limits: the whole batch
    assert micro_batch_size(batch, 0, 50) == 3  # ⌊50 / 16⌋
    assert micro_batch_size(batch, 2, 50) == 2  # the smaller of the two limits
    assert micro_batch_size(batch, 0, 5) == 1  # never zero rows
