"""The method-specific pictures, from each run's per-step ``diagnostics.jsonl`` (``Prepared.diagnostics``).

- ``plot_question_weights`` (SDPO family: sdpo, sc_sdpo, sdpo_hard_filter, sdpo_paced): at each per-question
  pass rate p of the step's group, (1) the fraction of the questions, (2) the mean question weight w_q, and
  (3) the share of the whole loss weight, Σ w_q·c_q over the questions at p divided by Σ w_q·c_q over all,
  where c_q is the fraction of the question's rows with a teacher context (the rows SDPO can distil). Plain
  SDPO puts its weight wherever contexts exist (most at p = 1); SC-SDPO's (p(1−p))^α moves it to p ≈ 1/2.
- ``plot_scope_weights`` (SCOPE): each path's weight against the perplexity that sets it — correct rows'
  w_S against the student's PPL_S, wrong rows' w_T against the teacher's PPL_T (dots: a sample of rows;
  line: the mean weight in perplexity quantile bins). Rows the teacher flags (the unreliable teacher's
  corrupted questions) are drawn as crosses.

Pooled over all logged steps; bars and lines are the mean over seeds with min–max error bars / bands.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from opdkit.eval.plots import BAND, Band, RunGroup, draw_band, new_figure, save_figure

MAX_DOTS = 2000  # rows drawn per method in a scatter (a seeded sample); the binned means use every row


def _pooled(diag_rows: list[dict], keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The lists of ``keys`` concatenated over the steps that logged all of them; None when none did."""
    rows = [r for r in diag_rows if all(isinstance(r.get(k), list) for k in keys)]
    if not rows:
        return None
    return {k: np.array([float(v) for r in rows for v in r[k]], dtype=float) for k in keys}


# --------------------------------------------------------------------------------------- question weights

QUESTION_KEYS = ("question/pass_rate", "question/weight", "question/context_fraction")


def pass_rate_profile(q: dict[str, np.ndarray], levels: np.ndarray) -> dict[str, np.ndarray]:
    """At each pass rate in ``levels``: fraction of questions, mean weight (NaN where none), loss share."""
    p, w, c = q["question/pass_rate"], q["question/weight"], q["question/context_fraction"]
    at = [np.isclose(p, level) for level in levels]
    mass = w * c
    total = mass.sum()
    return {
        "fraction": np.array([m.mean() for m in at]),
        "weight": np.array([w[m].mean() if m.any() else np.nan for m in at]),
        "share": np.array([mass[m].sum() / total if total > 0 else 0.0 for m in at]),
    }


def _seed_profiles(groups: Sequence[RunGroup]) -> tuple[np.ndarray, dict[str, list[dict]]]:
    pooled = {g.legend: [_pooled(d, QUESTION_KEYS) for d in g.diagnostics] for g in groups}
    pooled = {k: [q for q in v if q is not None] for k, v in pooled.items()}
    pooled = {k: v for k, v in pooled.items() if v}
    if not pooled:
        return np.array([]), {}
    levels = np.unique(np.round(np.concatenate([q[QUESTION_KEYS[0]] for v in pooled.values() for q in v]), 4))
    return levels, {k: [pass_rate_profile(q, levels) for q in v] for k, v in pooled.items()}


def _bars(ax, levels: np.ndarray, profiles: dict[str, list[dict]], stat: str) -> None:
    width = 0.8 * (levels[1] - levels[0] if len(levels) > 1 else 1.0) / max(1, len(profiles))
    for i, (label, seeds) in enumerate(profiles.items()):
        vals = np.array([s[stat] for s in seeds])
        mean = vals.mean(axis=0)
        err = np.stack([mean - vals.min(axis=0), vals.max(axis=0) - mean])
        offset = (i - (len(profiles) - 1) / 2) * width
        ax.bar(levels + offset, mean, width, yerr=err, capsize=2, label=label, alpha=0.85)


def plot_question_weights(groups: Sequence[RunGroup], path: Path) -> Path | None:
    """The SDPO-family picture of the module docstring; None when no run logged question diagnostics."""
    levels, profiles = _seed_profiles(groups)
    if not profiles:
        return None
    fig, (ax_n, ax_w, ax_s) = new_figure(3, cols=3, width=5.0)
    _bars(ax_n, levels, profiles, "fraction")
    ax_n.set_title("questions at each pass rate", fontsize=10)
    for label, seeds in profiles.items():
        vals = np.array([s["weight"] for s in seeds])
        with np.errstate(all="ignore"):
            band = Band(levels, np.nanmean(vals, 0), np.nanmin(vals, 0), np.nanmax(vals, 0))
        draw_band(ax_w, band, label)
    ax_w.set_title("mean question weight w_q", fontsize=10)
    _bars(ax_s, levels, profiles, "share")
    ax_s.set_title("share of the loss weight (Σ w_q·c_q)", fontsize=10)
    for ax in (ax_n, ax_w, ax_s):
        ax.set_xlabel("pass rate of the question's group p_q")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(
        fig, path, f"where the question weight goes (all steps pooled; mean over seeds, {BAND})"
    )


# ------------------------------------------------------------------------------------------ SCOPE weights

ROW_KEYS = ("row/correct", "row/ppl_student", "row/ppl_teacher", "row/w_student", "row/w_teacher")


def binned_means(x: np.ndarray, y: np.ndarray, bins: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Mean of y in ``bins`` quantile bins of log x -> (geometric bin centres, means); empty bins dropped."""
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = np.log(x[keep]), y[keep]
    if x.size == 0:
        return np.array([]), np.array([])
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, max(0, len(edges) - 2))
    used = [b for b in range(max(1, len(edges) - 1)) if np.any(which == b)]
    return (
        np.array([np.exp(x[which == b].mean()) for b in used]),
        np.array([y[which == b].mean() for b in used]),
    )


def _scope_panel(ax, rows: dict[str, np.ndarray], on: np.ndarray, x_key: str, w_key: str, label: str):
    rng = np.random.default_rng(0)
    x, w = rows[x_key][on], rows[w_key][on]
    flag = rows["row/teacher_flag"][on] > 0.5 if "row/teacher_flag" in rows else np.zeros_like(on[on])
    centres, means = binned_means(x, w)
    (line,) = ax.plot(centres, means, marker="o", ms=3, label=label)
    dots = rng.permutation(len(x))[:MAX_DOTS]
    clean, bad = dots[~flag[dots]], dots[flag[dots]]
    ax.scatter(x[clean], w[clean], s=4, alpha=0.15, color=line.get_color(), rasterized=True)
    if bad.size:
        ax.scatter(x[bad], w[bad], s=14, marker="x", alpha=0.5, color=line.get_color(),
                   label=f"{label}: rows the teacher flags", rasterized=True)  # fmt: skip


def plot_scope_weights(groups: Sequence[RunGroup], path: Path) -> Path | None:
    """The SCOPE picture of the module docstring; None when no run logged per-row SCOPE diagnostics."""
    pooled = {}
    for g in groups:
        per_seed = [_pooled(d, ROW_KEYS) for d in g.diagnostics]
        per_seed = [r for r in per_seed if r is not None]
        if per_seed:
            flags = [_pooled(d, ("row/teacher_flag",)) for d in g.diagnostics]
            rows = {k: np.concatenate([r[k] for r in per_seed]) for k in ROW_KEYS}
            if all(f is not None for f in flags):
                rows["row/teacher_flag"] = np.concatenate([f["row/teacher_flag"] for f in flags])
            pooled[g.legend] = rows
    if not pooled:
        return None
    fig, (ax_s, ax_t) = new_figure(2)
    for label, rows in pooled.items():
        correct = rows["row/correct"] > 0.5
        _scope_panel(ax_s, rows, correct, "row/ppl_student", "row/w_student", label)
        _scope_panel(ax_t, rows, ~correct, "row/ppl_teacher", "row/w_teacher", label)
    ax_s.set_title("correct rows: MLE weight w_S vs student perplexity PPL_S", fontsize=10)
    ax_t.set_title("wrong rows: OPD weight w_T vs teacher perplexity PPL_T", fontsize=10)
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax, name in ((ax_s, "PPL_S"), (ax_t, "PPL_T")):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{name} = exp(−mean token log-prob) of the row")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(
        fig, path, "SCOPE path weights (all steps and seeds pooled; line: mean in quantile bins)"
    )
