"""``opdkit demo``: the comparison table's arithmetic, and a short real demo (worker processes, plots)."""

from __future__ import annotations

import json

import pytest

from opdkit.train.demo import DemoPlan, comparison_table, run_demo


def test_comparison_table_gives_mean_and_sample_std_over_seeds():
    runs = [
        {"method": "opd", "before": {"mean@4": 0.4, "pass@1": 0.4}, "after": {"mean@4": 0.5, "pass@1": 0.5}},
        {"method": "opd", "before": {"mean@4": 0.4, "pass@1": 0.4}, "after": {"mean@4": 0.7, "pass@1": 0.7}},
        {"method": "scope", "before": {"mean@4": 0.4}, "after": {"mean@4": 0.6}},
    ]
    lines = comparison_table(runs).splitlines()
    assert lines[0] == "| method | seeds | mean@4 before → after |"  # pass@1 = mean@k: not repeated
    # opd after: mean (0.5 + 0.7) / 2 = 0.6; sample std sqrt(((0.1)^2 + (0.1)^2) / (2 - 1)) = 0.1414
    assert lines[2] == "| opd | 2 | 0.400 ± 0.000 → 0.600 ± 0.141 |"
    assert lines[3] == "| scope | 1 | 0.400 → 0.600 |"  # one seed: no spread to report


@pytest.mark.slow
def test_a_short_demo_writes_runs_plots_and_the_table(warm_cache, tmp_path):
    plan = DemoPlan(
        methods=("opd", "scope", "sdpo", "sc_sdpo"), seeds=(0,), workers=2,
        overrides=(f"warmstart.cache_dir={warm_cache}", "steps=2", "eval.every=2", "eval.num_problems=8"),
    )  # fmt: skip
    result = run_demo(tmp_path, plan, log=lambda _: None)
    assert sorted(result.runs) == ["opd-0", "sc_sdpo-0", "scope-0", "sdpo-0"]
    assert all(r["status"] == "completed" and r["after"] for r in result.runs.values())
    assert (tmp_path / "plots" / "opd_vs_scope" / "eval.png").is_file()
    assert (tmp_path / "plots" / "sdpo_vs_sc_sdpo" / "training.png").is_file()
    assert (tmp_path / "summary.md").read_text().startswith(result.table)
    assert len(json.loads((tmp_path / "summary.json").read_text())) == 4
    for method in ("opd", "scope", "sdpo", "sc_sdpo"):
        assert f"| {method} | 1 |" in result.table
