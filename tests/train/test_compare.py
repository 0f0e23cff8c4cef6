"""``opdkit compare``: reading prepared run directories (real config.yaml / metrics.jsonl files), the budget
check, the report, and a short real comparison end to end through the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from opdkit.cli import app
from opdkit.recipes.compare import arms_of, compare_arms, read_arms
from opdkit.train.config import load_config
from opdkit.train.configio import to_dict

runner = CliRunner()


def _run(root: Path, label: str, seed: int, final: float, extra=(), last_step: int = 4) -> Path:
    cfg = load_config("tiny/opd", ["steps=4", f"seed={seed}", *extra])
    run = root / f"{label}-seed{seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    rows = [{"step": 0, "eval/mean@4": 0.3}, *({"step": s, "loss/total": 0.1} for s in range(1, last_step))]
    rows.append({"step": last_step, "eval/mean@4": final})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_runs_pair_by_seed_and_report_each_difference(tmp_path):
    for seed, (a, b) in enumerate([(0.40, 0.45), (0.42, 0.44), (0.38, 0.46)]):
        _run(tmp_path, "opd", seed, a)
        _run(tmp_path, "scope", seed, b)
    _run(tmp_path, "scope", 7, 0.9)  # a seed the baseline lacks: left out of the pairs
    arms = read_arms(tmp_path, "eval/mean@4", ["opd", "scope"])
    (c,) = compare_arms(arms)
    assert c.seeds == (0, 1, 2)
    # differences 0.05, 0.02, 0.08: mean 0.05; every resample mean lies in [0.02, 0.08]
    assert c.result.mean == pytest.approx(0.05)
    assert c.result.low == pytest.approx(0.02) and c.result.high == pytest.approx(0.08)
    assert c.result.verdict == "no difference detectable at this budget"  # 3 pairs: sign-flip p >= 0.25

    result = runner.invoke(app, ["compare", "opd", "scope", "--runs", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (
        "| scope − opd | 3 | 0.400 ± 0.020 | 0.450 ± 0.010 | +0.050 | [+0.020, +0.080] | 0.25 |"
        in result.output
    )
    assert "3 pairs cannot reach p <= 0.05" in result.output
    assert (tmp_path / "compare.md").read_text().startswith("eval/mean@4 at the final evaluation")


def test_runs_of_different_budgets_or_unfinished_runs_are_refused(tmp_path):
    for seed in (0, 1):
        _run(tmp_path / "budget", "opd", seed, 0.4)
        _run(tmp_path / "budget", "scope", seed, 0.5, extra=["rollout.n=4"])
    with pytest.raises(ValueError, match=re.escape("differ in budget: {'rollout.n': (8, 4)}")):
        compare_arms(read_arms(tmp_path / "budget", "eval/mean@4"))
    _run(tmp_path / "short", "opd", 0, 0.4, last_step=3)
    with pytest.raises(ValueError, match="unfinished"):
        read_arms(tmp_path / "short", "eval/mean@4")
    result = runner.invoke(app, ["compare", "--runs", str(tmp_path / "budget"), "--metric", "eval/nope"])
    assert result.exit_code == 2 and "no 'eval/nope' logged; evaluation keys: eval/mean@4" in result.output


def test_arm_labels_are_file_names_and_must_differ():
    assert [a.label for a in arms_of(["tiny/scope", "configs/my_opd.yaml"])] == ["scope", "my_opd"]
    with pytest.raises(ValueError, match="share a label"):
        arms_of(["tiny/scope", "paper/scope"])


@pytest.mark.slow
def test_compare_trains_missing_runs_then_reads_finished_ones(overrides, tmp_path):
    configs = []
    for method in ("grpo", "grpo_no_std"):
        path = tmp_path / f"{method}.yaml"
        path.write_text(yaml.safe_dump({"method": {"name": method}}))
        configs.append(str(path))
    # the synthetic task (the toy verifier is registered in this process only, not in the workers)
    shared = [o for o in overrides("grpo") if not o.startswith(("method.name=", "data."))]
    shared += ["data.train=task", "data.eval=task", "data.task.train_size=16", "data.task.eval_size=4"]
    args = ["compare", *configs, "--seeds", "0,1", "--output", str(tmp_path / "out"), "--workers", "1",
            "--metric", "eval/mean@2"]  # fmt: skip
    for o in shared:
        args += ["--set", o]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "| grpo_no_std − grpo | 2 |" in first.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == [
        "grpo-seed0", "grpo-seed1", "grpo_no_std-seed0", "grpo_no_std-seed1",
    ]  # fmt: skip
    again = runner.invoke(app, args)  # everything finished: read, not retrained
    assert again.exit_code == 0 and again.output.count("finished run found") == 4
    assert again.output.splitlines()[-1] == first.output.splitlines()[-1]
