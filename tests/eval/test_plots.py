"""Plots: the seed aggregation, the duplicate-metric rule, the method-specific statistics, and real PNGs
written from prepared run directories (real files, read back by ``plot_runs``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from opdkit.eval.plots import (
    distinct_keys,
    group_label,
    group_runs,
    plot_runs,
    seed_band,
    trailing_mean,
)
from opdkit.eval.plots_methods import binned_means, pass_rate_profile


def _write(run: Path, metrics: list[dict], diagnostics: list[dict] = ()) -> Path:
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    if diagnostics:
        (run / "diagnostics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in diagnostics))
    return run


def test_runs_group_by_name_without_the_seed_suffix(tmp_path):
    assert group_label("runs/demo/scope-seed12") == "scope"
    assert group_label("runs/my-run") == "my-run"  # no suffix: its own group
    a = _write(tmp_path / "opd-seed0", [{"step": 1, "x": 1.0}])
    b = _write(tmp_path / "opd-seed1", [{"step": 1, "x": 2.0}])
    c = _write(tmp_path / "scope-seed0", [{"step": 1, "x": 3.0}])
    groups = group_runs([a, c, b])
    assert [(g.label, len(g.metrics)) for g in groups] == [("opd", 2), ("scope", 1)]
    assert [g.legend for g in groups] == ["opd (2 seeds)", "scope"]


def test_seed_band_is_the_mean_and_min_max_at_each_step():
    band = seed_band([(np.array([1, 2]), np.array([0.2, 0.4])), (np.array([1, 2]), np.array([0.6, 0.5]))])
    # step 1: mean (0.2 + 0.6) / 2 = 0.4, min 0.2, max 0.6; step 2: 0.45, 0.4, 0.5
    np.testing.assert_allclose(band.mean, [0.4, 0.45])
    np.testing.assert_allclose(band.low, [0.2, 0.4])
    np.testing.assert_allclose(band.high, [0.6, 0.5])
    # a step only one seed logged is that seed's value
    one = seed_band([(np.array([1, 3]), np.array([1.0, 2.0])), (np.array([1]), np.array([3.0]))])
    np.testing.assert_allclose(one.mean, [2.0, 2.0])


def test_trailing_mean_averages_the_last_window_values():
    # [1, 3, 5, 7] window 2: 1, (1+3)/2, (3+5)/2, (5+7)/2
    np.testing.assert_allclose(trailing_mean(np.array([1.0, 3, 5, 7]), 2), [1, 2, 4, 6])
    np.testing.assert_allclose(trailing_mean(np.array([1.0, 3]), 1), [1, 3])


def test_a_metric_equal_to_an_earlier_one_in_every_run_is_dropped(tmp_path):
    rows = [
        {"step": s, "eval/mean@4": v, "eval/pass@1": v, "eval/pass@4": v + 0.1}
        for s, v in ((0, 0.3), (10, 0.5))
    ]
    other = [{"step": 0, "eval/mean@4": 0.2, "eval/pass@1": 0.2, "eval/pass@4": 0.2}]
    groups = group_runs([_write(tmp_path / "a-seed0", rows), _write(tmp_path / "a-seed1", other)])
    keys = ["eval/mean@4", "eval/pass@1", "eval/pass@4", "eval/maj@4"]
    # pass@1 = mean@4 everywhere; pass@4 equals it in the second run only (kept); maj@4 never logged
    assert distinct_keys(groups, keys) == ["eval/mean@4", "eval/pass@4"]


def test_pass_rate_profile_hand_case():
    q = {
        "question/pass_rate": np.array([0.0, 0.5, 0.5, 1.0]),
        "question/weight": np.array([0.0, 2.0, 1.0, 1.0]),
        "question/context_fraction": np.array([0.0, 0.5, 1.0, 1.0]),
    }
    prof = pass_rate_profile(q, np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(prof["fraction"], [0.25, 0.5, 0.25])
    np.testing.assert_allclose(prof["weight"], [0.0, 1.5, 1.0])
    # mass w·c = 0, 1, 1, 1 -> share at p = 0.5: 2/3, at p = 1: 1/3
    np.testing.assert_allclose(prof["share"], [0.0, 2 / 3, 1 / 3])


def test_binned_means_are_geometric_centres_and_means():
    x = np.array([1.0, 1.0, np.e**2, np.e**2])
    y = np.array([1.0, 3.0, 5.0, 7.0])
    centres, means = binned_means(x, y, bins=2)  # quantile edges of log x: 0, 1, 2
    np.testing.assert_allclose(centres, [1.0, np.e**2])
    np.testing.assert_allclose(means, [2.0, 6.0])


def _diag_question(step: int, rng) -> dict:
    p = rng.integers(0, 9, size=16) / 8
    w = np.sqrt(p * (1 - p))
    w = w / max(w.mean(), 1e-9)
    return {"step": step, "question/pass_rate": p.tolist(), "question/weight": w.tolist(),
            "question/context_fraction": (p > 0).astype(float).tolist()}  # fmt: skip


def _diag_rows(step: int, rng, flags: bool) -> dict:
    n = 32
    row = {"step": step, "row/correct": (rng.random(n) < 0.4).astype(float).tolist(),
           "row/ppl_student": np.exp(rng.random(n)).tolist(),
           "row/ppl_teacher": np.exp(2 * rng.random(n)).tolist(),
           "row/w_student": rng.random(n).tolist(), "row/w_teacher": rng.random(n).tolist()}  # fmt: skip
    if flags:
        row["row/teacher_flag"] = (rng.random(n) < 0.25).astype(float).tolist()
    return row


@pytest.mark.parametrize("flags", [False, True])
def test_plot_runs_writes_every_panel_group_from_prepared_runs(tmp_path, flags):
    rng = np.random.default_rng(0)
    dirs = []
    for method in ("sdpo", "sc_sdpo", "scope"):
        for seed in (0, 1):
            metrics = [{"step": 0, "eval/mean@4": 0.3, "eval/pass@1": 0.3}]
            metrics += [
                {"step": s, "pass_rate/mean": rng.random(), "loss/total": rng.random()} for s in range(1, 9)
            ]
            metrics += [{"step": 8, "eval/mean@4": 0.4 + 0.1 * seed, "eval/pass@1": 0.4 + 0.1 * seed}]
            make = (
                (lambda s: _diag_rows(s, rng, flags))
                if method == "scope"
                else (lambda s: _diag_question(s, rng))
            )
            dirs.append(_write(tmp_path / f"{method}-seed{seed}", metrics, [make(s) for s in range(1, 9)]))
    written = plot_runs(dirs, tmp_path / "plots")
    names = sorted(p.name for p in written)
    assert names == ["eval.png", "question_weights.png", "scope_weights.png", "training.png"]
    assert all(p.stat().st_size > 10_000 for p in written)
    # a single sdpo run: its question picture, no SCOPE picture
    assert sorted(p.name for p in plot_runs(dirs[:1], tmp_path / "one")) == [
        "eval.png",
        "question_weights.png",
        "training.png",
    ]
