"""Everything a run needs later is checked before step 1 and before its run directory exists; the final
checkpoint is written before the final evaluation, so a crash there loses no training."""

from __future__ import annotations

import json

import pytest
from reliability_helpers import assert_clean_refusal, free_port, invoke, write_rows

from opdkit.train import train
from opdkit.train.checkpoint import latest_checkpoint
from opdkit.train.config import load_config
from opdkit.train.preflight import PreflightError, preflight


def test_an_unknown_verifier_in_an_eval_row_is_refused_before_training(short_run, tmp_path):
    bad = write_rows(tmp_path / "eval.jsonl", 3)
    rows = bad.read_text().splitlines()
    row = json.loads(rows[2])
    row["verifier"] = "no_such_verifier"
    bad.write_text("\n".join([*rows[:2], json.dumps(row)]) + "\n")
    result = invoke("train", "tiny/opd", *short_run(**{"data.eval": bad, "eval.num_problems": 0}),
                    "--output", tmp_path / "run")  # fmt: skip
    assert_clean_refusal(result, "data.eval", "eval.jsonl", "unknown verifier 'no_such_verifier'")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.student={missing}", "model.student: no model directory"),
        ("teacher.path={missing}", "teacher.path: no model directory"),
        ("model.student={empty_dir}", "not a Hugging Face model directory (no config.json)"),
        ("teacher.kind=none", "teacher.kind: method opd needs an external teacher"),
        ("teacher.kind=server", "teacher.url: teacher.kind=server needs"),
        ("data.train={missing}", "data.train"),
    ],
)
def test_missing_models_teachers_and_data_are_named_first(override, expected, short_run, tmp_path):
    (tmp_path / "empty").mkdir()
    override = override.format(missing=tmp_path / "nope", empty_dir=tmp_path / "empty")
    result = invoke("train", "tiny/opd", *short_run(), override, "--output", tmp_path / "run")
    assert_clean_refusal(result, expected)
    assert not (tmp_path / "run").exists()


def test_a_teacher_server_down_at_start_is_one_line_and_leaves_no_run_dir(short_run, tmp_path):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    server = short_run(**{"teacher.kind": "server", "teacher.url": down, "teacher.timeout_s": 2})
    result = invoke("train", "tiny/opd", *server, "--output", tmp_path / "run")
    assert_clean_refusal(result, "teacher.url", down, "not reachable")
    assert not (tmp_path / "run").exists()
    # the plain re-run, with a teacher that works, is not blocked by anything left behind
    again = invoke("train", "tiny/opd", *short_run(), "--output", tmp_path / "run")
    assert again.exit_code == 0, again.output


def test_server_key_from_the_environment_and_a_refused_key(teacher_server, short_run, monkeypatch):
    server = {"teacher.kind": "server", "teacher.url": teacher_server.url}
    monkeypatch.setenv("OPDKIT_TEST_TEACHER_KEY", teacher_server.api_key)
    preflight(load_config(None, short_run(**server, **{"teacher.api_key_env": "OPDKIT_TEST_TEACHER_KEY"})))
    with pytest.raises(PreflightError, match=r"teacher.api_key: .* refused the key \(HTTP 401\)"):
        preflight(load_config(None, short_run(**server, **{"teacher.api_key": "wrong"})))
    with pytest.raises(PreflightError, match=r"teacher.api_key_env: environment variable UNSET_VAR_"):
        preflight(load_config(None, short_run(**server, **{"teacher.api_key_env": "UNSET_VAR_123"})))


def test_final_checkpoint_and_row_come_before_the_final_eval(short_run, tmp_path, monkeypatch):
    import opdkit.train.loop as loop

    def crash(*args, **kwargs):
        raise RuntimeError("evaluation crashed")

    monkeypatch.setattr(loop, "_evaluate", crash)
    cfg = load_config("tiny/opd", short_run(steps=2, checkpoint_every=0))
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        train(cfg, tmp_path / "run")
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt is not None and ckpt.name == "step_2"  # checkpoint_every=0: only the final one
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "loss/total" in rows[-1]


def test_evaluations_join_their_steps_row(short_run, tmp_path):
    # eval.every=1, log_every=2: step 1 is not logged, so its evaluation gets a row of its own; step 2's
    # evaluation joins the training row written before the checkpoint
    overrides = short_run(steps=2, **{"eval.every": 1, "log_every": 2})
    result = invoke("train", "tiny/opd", *overrides, "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert "eval/mean@1" in rows[0] and "loss/total" not in rows[0]
    assert "loss/total" in rows[1] and "eval/mean@1" in rows[1]


def test_every_teacher_kind_has_a_preflight_check():
    import typing

    from opdkit.train.config import TeacherConfig
    from opdkit.train.preflight import _TEACHER_CHECKS

    kinds = set(typing.get_args(typing.get_type_hints(TeacherConfig)["kind"])) - {"none"}
    assert set(_TEACHER_CHECKS) == kinds


@pytest.mark.parametrize("kind", ["local", "unreliable"])
def test_a_teacher_loaded_in_process_needs_its_model_directory_not_a_url(kind, short_run, tmp_path):
    # teacher.kind=unreliable was once checked as a server ("needs the server's base URL")
    preflight(load_config(None, short_run(**{"teacher.kind": kind})))
    missing = short_run(**{"teacher.kind": kind, "teacher.path": tmp_path / "nope"})
    with pytest.raises(PreflightError, match=r"teacher\.path: no model directory"):
        preflight(load_config(None, missing))
