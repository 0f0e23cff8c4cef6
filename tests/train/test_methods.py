"""Every method end to end: two steps on a tiny model change the weights, log finite losses and metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from opdkit.train import METHODS, load_config, train

EXPECTED_KEYS = {
    "grpo": ["adv/abs_mean"],
    "grpo_no_std": ["adv/abs_mean"],
    "opd": ["teacher/reverse_kl", "teacher/valid_fraction"],
    "scope": ["weights/scope_teacher_mean", "scope/correct_fraction", "loss/mle_loss", "loss/pg_loss"],
    "sdpo": ["sdpo/reprompt_fraction", "sdpo/success_group_fraction"],
    "sc_sdpo": ["weights/question_nonzero_fraction"],
    "sdpo_hard_filter": ["weights/question_nonzero_fraction"],
    "sdpo_paced": ["weights/question_nonzero_fraction"],
    "srpo": ["srpo/sdpo_fraction", "loss/sdpo_token_fraction"],
}


def test_every_registered_method_is_covered():
    assert sorted(EXPECTED_KEYS) == METHODS.names()


@pytest.mark.parametrize("method", sorted(EXPECTED_KEYS))
def test_two_steps_change_the_weights_and_log_metrics(method, overrides, tiny_dirs, tmp_path):
    overrides = overrides(method)
    if method == "sdpo_paced":
        overrides.append("method.offline_samples=4")
    result = train(load_config(None, overrides), tmp_path / method)
    assert result.status == "completed" and result.last_step == 2

    rows = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert sum(r["train/updates"] for r in rows) >= 1, "no step made an update"
    for row in rows:
        assert math.isfinite(row["loss/total"]) if "loss/total" in row else row["train/skipped"] == 1.0
        for key in ("reward/mean", "pass_rate/mean", "time/step_s", *EXPECTED_KEYS[method]):
            assert key in row, f"{key} missing from step {row['step']}"
    assert "eval/mean@2" in rows[-1] and "eval/pass@2" in rows[-1] and "eval/maj@2" in rows[-1]

    before = load_file(str(tiny_dirs["student"] / "model.safetensors"))
    after = load_file(str(tmp_path / method / "checkpoints" / "step_2" / "model" / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "two steps left every weight unchanged"
