"""Fixtures for the reliability suite: a tiny student/teacher pair built locally (no downloads), a small
data file checked by the real ``math`` verifier, and ``short_run(...)``: the dotted overrides of a one- or
two-step run on them, so every case below runs the real CLI in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import write_rows

from lm_fixtures import save_tiny_pair


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    return save_tiny_pair(tmp_path_factory.mktemp("reliability-models"))


@pytest.fixture(scope="session")
def data_file(tmp_path_factory) -> Path:
    return write_rows(tmp_path_factory.mktemp("reliability-data") / "toy.jsonl", 8)


@pytest.fixture
def short_run(model_dirs, data_file):
    """``short_run(method="opd", steps=1, **extra)`` -> overrides of a run of ``steps`` steps."""

    def build(method: str = "opd", steps: int = 1, **extra: object) -> list[str]:
        base = {
            "method.name": method, "model.student": model_dirs["student"], "model.device": "cpu",
            "steps": steps, "rollout.prompts_per_step": 2, "rollout.n": 2, "rollout.max_new_tokens": 4,
            "data.train": data_file, "data.eval": data_file, "eval.k": 1, "eval.num_problems": 2,
            "eval.at_start": "false", "teacher.kind": "local", "teacher.path": model_dirs["teacher"],
        }  # fmt: skip
        base.update(extra)
        return [f"{key}={value}" for key, value in base.items()]

    return build
