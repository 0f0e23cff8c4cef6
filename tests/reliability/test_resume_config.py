"""``--resume`` refuses a config that differs from the run's saved config.yaml (listing the keys) unless only
the allow-listed keys changed, and never rewrites config.yaml to claim values that did not run. The teacher's
API key never reaches config.yaml in clear."""

from __future__ import annotations

import pytest
import yaml
from reliability_helpers import assert_clean_refusal, invoke

from opdkit.train.config import load_config
from opdkit.train.rundir import REDACTED, RESUMABLE_KEYS, RunDir, RunDirError
from opdkit.train.setup import server_api_key


def _saved(run) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def test_a_changed_config_is_refused_listing_every_changed_key(tmp_path):
    run = RunDir.open(tmp_path / "run", load_config("tiny/grpo")).path
    before = (run / "config.yaml").read_text()
    changed = load_config("tiny/grpo", ["optim.lr=0.5", "rollout.n=4", "steps=99"])
    with pytest.raises(RunDirError, match=r"differs from .*config.yaml in: optim.lr, rollout.n \(only steps"):
        RunDir.open(run, changed, resume=True)
    assert (run / "config.yaml").read_text() == before  # nothing claims lr 0.5


def test_allow_listed_changes_are_accepted_and_recorded(tmp_path):
    run = RunDir.open(tmp_path / "run", load_config("tiny/grpo")).path
    longer = load_config("tiny/grpo", ["steps=99", "eval.every=5", "checkpoint_every=3", "log_every=2"])
    RunDir.open(run, longer, resume=True)
    saved = _saved(run)
    assert (saved["steps"], saved["eval"]["every"], saved["checkpoint_every"], saved["log_every"]) == (
        99,
        5,
        3,
        2,
    )
    assert {"steps", "eval.every", "checkpoint_every", "log_every"} <= set(RESUMABLE_KEYS)


def test_the_api_key_is_redacted_and_a_resume_with_it_is_accepted(tmp_path):
    server = ["teacher.kind=server", "teacher.url=http://127.0.0.1:9", "teacher.api_key=sk-secret-123"]
    run = RunDir.open(tmp_path / "run", load_config("tiny/opd", server)).path
    assert "sk-secret-123" not in (run / "config.yaml").read_text()
    assert _saved(run)["teacher"]["api_key"] == REDACTED
    RunDir.open(run, load_config("tiny/opd", server), resume=True)  # same key: no difference
    assert "sk-secret-123" not in (run / "config.yaml").read_text()


def test_the_api_key_can_come_from_an_environment_variable(monkeypatch):
    cfg = load_config("tiny/opd", ["teacher.kind=server", "teacher.api_key_env=OPDKIT_KEY_FOR_TEST"])
    monkeypatch.setenv("OPDKIT_KEY_FOR_TEST", "sk-from-env")
    assert server_api_key(cfg.teacher) == "sk-from-env"
    explicit = load_config(
        "tiny/opd", ["teacher.api_key=sk-explicit", "teacher.api_key_env=OPDKIT_KEY_FOR_TEST"]
    )
    assert server_api_key(explicit.teacher) == "sk-explicit"  # an explicit key wins


def test_cli_resume_refuses_a_changed_lr_then_extends_steps(short_run, tmp_path):
    run = tmp_path / "run"
    first = invoke("train", "tiny/opd", *short_run(steps=1), "--output", run)
    assert first.exit_code == 0, first.output
    lr = _saved(run)["optim"]["lr"]
    refused = invoke("train", "tiny/opd", *short_run(steps=1), "optim.lr=0.5", "--output", run, "--resume")
    assert_clean_refusal(refused, "--resume refuses", "optim.lr")
    assert _saved(run)["optim"]["lr"] == lr
    extended = invoke("train", "tiny/opd", *short_run(steps=2), "--output", run, "--resume")
    assert extended.exit_code == 0, extended.output
    assert "completed at step 2" in extended.output and _saved(run)["steps"] == 2
