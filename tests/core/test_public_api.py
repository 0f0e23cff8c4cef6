"""The public core API of docs/architecture.md ("Public core API": names are part of the spec).

Each row of the DESIGN table is checked for its module, name, positional parameters, keyword-only parameters
and defaults, so a rename or a changed default is caught here rather than in a caller.
"""

import importlib
import inspect

import pytest

P, K = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
NO = inspect.Parameter.empty

# (module, function, [(parameter, kind, default)]) from docs/architecture.md's table; extra trailing
# keyword-only parameters with defaults are allowed (they extend the contract without breaking callers).
DESIGN_TABLE = [
    ("opdkit.core.advantages", "grpo_advantages",
     [("rewards_N", P, NO), ("group_ids_N", P, NO), ("normalize_std", K, True), ("eps", K, 1e-6)]),
    ("opdkit.core.advantages", "group_pass_rates", [("success_N", P, NO), ("group_ids_N", P, NO)]),
    ("opdkit.core.weights", "pass_rate_weights", [("pass_rate", P, NO), ("alpha", K, 0.5)]),
    ("opdkit.core.weights", "hard_filter_weights", [("pass_rate", P, NO)]),
    ("opdkit.core.weights", "scope_weights",
     [("student_seq_logp_N", P, NO), ("teacher_seq_logp_N", P, NO), ("correct_N", P, NO),
      ("group_ids_N", P, NO), ("tau", K, 1.0), ("student_exponent", K, 1.0), ("teacher_exponent", K, -1.0),
      ("normalization", K, "mean1")]),
    ("opdkit.core.divergences", "token_divergence",
     [("student_logp", P, NO), ("teacher_logp", P, NO), ("alpha", K, NO)]),
    ("opdkit.core.divergences", "topk_with_tail",
     [("student_logits", P, NO), ("teacher_logits", P, NO), ("k", K, NO), ("tail", K, True)]),
    ("opdkit.core.losses", "aggregate",
     [("loss_N_T", P, NO), ("mask_N_T", P, NO), ("mode", P, NO), ("norm_length", K, None)]),
    ("opdkit.core.losses", "clipped_policy_loss",
     [("logp", P, NO), ("old_logp", P, NO), ("advantages", P, NO), ("mask", P, NO), ("clip_low", K, 0.2),
      ("clip_high", K, 0.28), ("dual_clip", K, 3.0), ("mode", K, "token-mean")]),
    ("opdkit.metrics", "pass_at_k", [("n", P, NO), ("c", P, NO), ("k", P, NO)]),
    ("opdkit.metrics", "mean_at_k", [("correct_P_K", P, NO)]),
    ("opdkit.metrics", "maj_at_k", [("preds_P_K", P, NO), ("correct_P_K", P, NO)]),
]  # fmt: skip


@pytest.mark.parametrize(("module", "name", "params"), DESIGN_TABLE, ids=[row[1] for row in DESIGN_TABLE])
def test_signature_matches_design_table(module, name, params):
    fn = getattr(importlib.import_module(module), name)
    actual = list(inspect.signature(fn).parameters.values())
    for (pname, kind, default), got in zip(params, actual):
        assert (got.name, got.kind, got.default) == (pname, kind, default), f"{name}: {got} vs {pname}"
    for extra in actual[len(params) :]:
        assert extra.kind == K and extra.default is not NO, f"{name}: unexpected required parameter {extra}"


def test_scope_weights_returns_named_fields_and_topk_a_pair():
    import torch

    from opdkit.core.divergences import topk_with_tail
    from opdkit.core.weights import scope_weights

    w = scope_weights(torch.zeros(2), torch.zeros(2), torch.tensor([True, False]), torch.tensor([1, 1]))
    assert set(vars(w)) >= {"student_N", "teacher_N"}
    student, teacher = topk_with_tail(torch.zeros(1, 4), torch.zeros(1, 4), k=2)
    assert student.shape == teacher.shape == (1, 3)


def test_bootstrap_variants_are_clearly_named():
    metrics = importlib.import_module("opdkit.metrics")
    names = [n for n in dir(metrics) if "bootstrap" in n and not n.startswith("_")]
    assert {"bootstrap_best_at_k", "bootstrap_maj_at_k"} <= set(names)
