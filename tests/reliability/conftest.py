"""Fixtures for the reliability suite: a tiny student/teacher pair built locally (no downloads), a small
data file checked by the real ``math`` verifier, and ``short_run(...)``: the dotted overrides of a one- or
two-step run on them, so every case below runs the real CLI in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import write_rows


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    from opdkit.models import TinyModelConfig, build_char_tokenizer, build_tiny_model, save_pretrained_atomic

    root = tmp_path_factory.mktemp("reliability-models")
    tok = build_char_tokenizer()
    dirs = {}
    for name, seed in (("student", 0), ("teacher", 1)):
        model = build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2), tok, seed=seed)
        dirs[name] = save_pretrained_atomic(model, tok, root / name)
    return dirs


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
