"""Small things a user meets first: switching methods on the command line, and a teacher server that is
down when the run starts."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from opdkit.cli import app
from opdkit.train import ConfigError, load_config


def test_switching_method_by_override_drops_the_yaml_keys_of_the_old_method(capsys):
    cfg = load_config("paper/scope", ["method.name=sc_sdpo"])
    assert cfg.method.name == "sc_sdpo" and cfg.method.sc_alpha == 0.5  # the new method's default
    assert cfg.method.agg == "seq-mean-token-mean"  # scope's agg 'code' is not an SDPO aggregation
    note = capsys.readouterr().err
    # paper/scope.yaml's method keys: name, tau, sign_preset, normalization, agg
    assert "method.agg, method.normalization, method.sign_preset, method.tau" in note


def test_a_key_given_on_the_command_line_is_still_checked():
    with pytest.raises(ConfigError, match=r"unknown key 'method\.tau'"):
        load_config("paper/scope", ["method.name=sc_sdpo", "method.tau=1.0"])


def test_the_same_method_keeps_every_key(capsys):
    cfg = load_config("paper/scope", ["method.name=scope"])
    assert cfg.method.agg == "code" and capsys.readouterr().err == ""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # released on exit: nothing listens there


def test_a_teacher_server_down_at_start_is_one_error_line(overrides, tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}"
    args = [*overrides("opd"), "teacher.kind=server", f"teacher.url={url}", "teacher.max_retries=0"]
    result = CliRunner().invoke(app, ["train", "tiny/opd", *args, "--output", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    # checked before the run directory exists (train.preflight), with the key named
    assert (
        "error: teacher.url:" in result.output and "not reachable" in result.output and url in result.output
    )
    assert not (tmp_path / "run").exists()
    assert "Traceback" not in result.output
