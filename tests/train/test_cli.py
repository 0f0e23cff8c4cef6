"""The ``opdkit`` command line, driven in-process through Typer's runner on the tiny models and toy data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opdkit.cli import app
from opdkit.train.methods import METHODS

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_every_subcommand():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("train", "eval", "plot", "demo", "compare", "methods", "serve-teacher", "verl-config"):
        assert command in result.output


def test_methods_lists_the_registry():
    result = invoke("methods")
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.output.splitlines() if line.strip()]
    assert listed == list(METHODS.names())


def test_help_config_lists_documented_keys():
    result = invoke("train", "tiny/scope", "--help-config")
    assert result.exit_code == 0
    assert "rollout.n = 8  # G: rollouts per question" in result.output


@pytest.mark.parametrize(
    "args, expected",
    [
        (("no/such_preset",), "presets: paper/grpo"),
        (("tiny/scope", "rollout.bogus=1"), "unknown key 'rollout.bogus'; valid keys of 'rollout'"),
        (("tiny/scope", "method.name=ppo"), "unknown method 'ppo'; valid methods: grpo"),
    ],
)
def test_config_errors_exit_2_and_say_what_is_valid(args, expected, tmp_path):
    result = invoke("train", *args, "--output", tmp_path / "run")
    assert result.exit_code == 2
    assert expected in result.output
    assert not (tmp_path / "run").exists()


def test_train_writes_a_run_refuses_to_overwrite_it_then_plots_and_evaluates(overrides, toy_data, tmp_path):
    run = tmp_path / "run"
    args = ("train", "tiny/opd", *overrides("opd", steps=2), "--output", run)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "completed at step 2" in result.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss/total" in r] == [1, 2]
    assert (run / "config.yaml").is_file()

    again = invoke(*args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert invoke(*args, "--overwrite").exit_code == 0

    plots = invoke("plot", run, run, "--out", tmp_path / "plots")
    assert plots.exit_code == 0, plots.output
    assert (tmp_path / "plots" / "training.png").stat().st_size > 1000

    model = Path(overrides("opd")[1].partition("=")[2])  # model.student=<dir>
    out = tmp_path / "eval"
    evaluated = invoke("eval", "--model", model, "--data", toy_data, "--k", 2, "--max-new-tokens", 4,
                       "--limit", 3, "--device", "cpu", "--output", out)  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 6
    assert {"prompt", "completion", "correct", "reward", "truncated"} <= set(records[0])
    summary = json.loads((out / "summary.json").read_text())["samples"]
    assert {"mean@2", "pass@2", "maj@2"} <= set(summary["average"])


def test_eval_with_missing_data_names_it(tmp_path):
    result = invoke("eval", "--model", tmp_path, "--data", tmp_path / "nope.jsonl", "--k", 1)
    assert result.exit_code == 2
    assert "nope.jsonl" in result.output
