"""Per-question / per-row diagnostics: what the SDPO family and SCOPE log for their plots, and the file."""

from __future__ import annotations

import json
import math

import torch

from opdkit.core.groups import sequence_mean
from opdkit.core.weights import pass_rate_weights
from opdkit.train import load_config, train
from opdkit.train.methods import METHODS
from opdkit.train.methods.sdpo import teacher_prompt_rows
from opdkit.train.rundir import RunDir

# 4 groups of 4: pass rates 0.5, 0.25, 0 (all wrong) and 1 (all correct).
MIXED = [1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_sc_sdpo_logs_each_question_pass_rate_weight_and_context(step_setup):
    cfg, batch, ctx = step_setup("sc_sdpo", MIXED)
    diag = METHODS.get("sc_sdpo").prepare(cfg, batch, ctx).diagnostics
    assert diag["question/pass_rate"] == [0.5, 0.25, 0.0, 1.0]
    expected = pass_rate_weights(torch.tensor([0.5, 0.25, 0.0, 1.0]))  # (p(1-p))^0.5, mean 1 over 0<p<1
    assert torch.allclose(torch.tensor(diag["question/weight"]), expected)
    sd_mask = teacher_prompt_rows(batch, ctx).sd_mask_N.float()
    assert diag["question/context_fraction"] == sd_mask.view(4, 4).mean(1).tolist()


def test_plain_sdpo_logs_weight_one_per_question(step_setup):
    cfg, batch, ctx = step_setup("sdpo", MIXED)
    diag = METHODS.get("sdpo").prepare(cfg, batch, ctx).diagnostics
    assert diag["question/weight"] == [1.0] * 4 and diag["question/pass_rate"] == [0.5, 0.25, 0.0, 1.0]


def test_scope_logs_each_row_perplexities_and_path_weights(step_setup):
    cfg, batch, ctx = step_setup("scope", MIXED)
    prepared = METHODS.get("scope").prepare(cfg, batch, ctx)
    diag = prepared.diagnostics
    assert diag["row/correct"] == [float(s) for s in MIXED]
    ppl_s = torch.exp(-sequence_mean(batch.old_logp_N_T, batch.response_mask_N_T))
    ppl_t = torch.exp(-sequence_mean(prepared.rows.teacher_logp_N_T, batch.response_mask_N_T))
    assert torch.allclose(torch.tensor(diag["row/ppl_student"]), ppl_s)
    assert torch.allclose(torch.tensor(diag["row/ppl_teacher"]), ppl_t)
    assert diag["row/w_student"] == prepared.rows.w_student_N.tolist()
    assert diag["row/w_teacher"] == prepared.rows.w_teacher_N.tolist()
    assert "row/teacher_flag" not in diag  # the local teacher flags no row


def test_a_run_writes_one_diagnostics_line_per_step_and_resume_truncates_it(overrides, tmp_path):
    train(load_config(None, overrides("sc_sdpo")), tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "diagnostics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert all(len(r["question/pass_rate"]) == 4 for r in lines)  # rollout.prompts_per_step=4

    run = RunDir(tmp_path / "run")
    run.log_diagnostics(3, {"question/weight": [1 / 3, float("nan")]})
    last = json.loads(run.diagnostics_path.read_text().splitlines()[-1])
    assert last["question/weight"] == [0.33333, "nan"]  # 5 significant digits; NaN kept visible
    run.truncate_metrics(1)
    assert [json.loads(x)["step"] for x in run.diagnostics_path.read_text().splitlines()] == [1]
    assert not math.isnan(lines[0]["question/weight"][0])
