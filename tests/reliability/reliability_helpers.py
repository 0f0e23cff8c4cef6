"""Helpers shared by the reliability tests: the CLI in-process and the shape of a clean refusal."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from typer.testing import CliRunner

from opdkit.cli import app


def invoke(*args: object):
    """The CLI in-process; ``result.output`` holds stdout and stderr."""
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean_refusal(result, *expected: str) -> None:
    """Exit 2, one line starting with 'error:', naming what was expected, and no traceback."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for text in expected:
        assert text in lines[0], (text, lines[0])


def write_rows(path: Path, count: int, verifier: str = "math") -> Path:
    rows = [
        {"prompt": [{"role": "user", "content": f"What is {i} + 1?"}], "solution": str(i + 1),
         "verifier": verifier, "data_source": "toy"}
        for i in range(count)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
