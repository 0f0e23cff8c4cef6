"""``opdkit demo``: the comparison table's arithmetic, and a short real demo (worker processes, plots)."""

from __future__ import annotations

import json

import pytest

from opdkit.recipes.demo import DemoPlan, comparison_table, pair_comparisons, run_demo


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


def test_the_closing_note_compares_each_pair_by_seed():
    runs = [
        {"method": m, "seed": s, "after": {"mean@4": v, "pass@4": 0.9}}
        for m, values in (("opd", (0.50, 0.60, 0.55)), ("scope", (0.52, 0.61, 0.60)),
                          ("sdpo", (0.5, 0.5, 0.5)), ("sc_sdpo", (0.4, 0.6, 0.5)))
        for s, v in enumerate(values)
    ]  # fmt: skip
    lines = pair_comparisons(runs).splitlines()
    # scope − opd per seed: 0.02, 0.01, 0.05 -> mean 0.027; the resample means span [0.01, 0.05]
    assert lines[0].startswith("- scope − opd, mean@4 after, 3 seeds paired: +0.027, 95% bootstrap interval")
    assert "[+0.010, +0.050], sign-flip p = 0.25: no difference detectable at this budget" in lines[0]
    # sc_sdpo − sdpo: -0.1, +0.1, 0 -> mean 0, the sign-flip p is 1
    assert "+0.000" in lines[1] and "sign-flip p = 1:" in lines[1]
    assert pair_comparisons([r for r in runs if r["seed"] == 0]) == ""  # one seed: nothing to pair


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
