"""GPU end-to-end smoke test: a few verl training steps of a small model with opdkit's methods, launched
exactly as ``opdkit verl-config`` prints it. Needs a CUDA GPU, vLLM (``pip install 'verl[vllm]==0.9.1'``)
and a small local chat model (no hub access): set ``OPDKIT_VERL_SMOKE_MODEL=/path/to/Qwen2.5-0.5B-Instruct``.
Skipped otherwise (the CPU CI machines have none of these): these run on users' GPU hosts, not in CI. One GPU
runs SC-weighted GRPO and SC-SDPO (the ``opdkit_sdpo`` trainer: the self-teacher lives in the actor's
workers); two run ``scope`` too (verl puts the teacher in its own GPU pool). Commands: docs/verl.md.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("verl")

from opdkit.integrations.verl.config_gen import verl_command

MODEL = os.environ.get("OPDKIT_VERL_SMOKE_MODEL")
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(GPUS == 0, reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM (verl[vllm])"),
    pytest.mark.skipif(not MODEL, reason="set OPDKIT_VERL_SMOKE_MODEL to a small local chat model"),
]


def _write_dataset(path: Path, rows: int) -> None:
    """Addition questions in verl's RL parquet layout, scored by verl's built-in GSM8K rule (``#### N``)."""
    import pandas as pd

    records = []
    for i in range(rows):
        a, b = 3 + i % 7, 5 + i % 11
        question = f"What is {a} + {b}? Think briefly, then give the final answer after '####'."
        records.append(
            {
                "data_source": "openai/gsm8k",
                "prompt": [{"role": "user", "content": question}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(a + b)},
                "extra_info": {"split": "train", "index": i},
            }
        )
    pd.DataFrame(records).to_parquet(path)


def _run(method: dict, dotted: list[str], tmp_path: Path, gpus: int) -> str:
    data = tmp_path / "train.parquet"
    _write_dataset(data, rows=64)
    cfg = {  # an opdkit training config, as `opdkit train` reads it, plus the verl section
        "method": method,
        "steps": 2,
        "model": {"student": MODEL},
        "data": {"train": str(data), "eval": "", "max_prompt_tokens": 128},
        "teacher": {"kind": "local", "path": MODEL},
        "rollout": {"prompts_per_step": 8, "n": 4, "max_new_tokens": 128},
        "optim": {"lr": 1e-6, "micro_batch_size": 4},
        "verl": {
            "n_gpus_per_node": 1,
            "teacher_n_gpus_per_node": 1,
            "gpu_memory_utilization": 0.35,
            "logger": ["console"],
            "extra": [f"trainer.default_local_dir={tmp_path / 'ckpt'}", "trainer.save_freq=-1"],
        },
    }
    command = verl_command(cfg, dotted)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(gpus))}
    result = subprocess.run(
        [sys.executable, *command.argv[1:]],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def test_sc_grpo_trains_two_steps_on_one_gpu(tmp_path: Path) -> None:
    out = _run({"name": "grpo"}, ["verl.sc_weighting=pass_rate"], tmp_path, gpus=1)
    assert "step:2" in out


@pytest.mark.skipif(GPUS < 2, reason="scope needs a second GPU for verl's teacher pool")
def test_scope_trains_two_steps_with_a_teacher_pool(tmp_path: Path) -> None:
    out = _run({"name": "scope"}, [], tmp_path, gpus=2)
    assert "step:2" in out
    assert "opdkit/scope_mle_scale" in out  # the opdkit_sync trainer's driver-side weights ran


def test_sc_sdpo_trains_two_steps_on_one_gpu(tmp_path: Path) -> None:
    """SC-SDPO on the opdkit_sdpo trainer: self-teacher = verl's ref model (EMA) in the actor's workers."""
    out = _run({"name": "sc_sdpo"}, [], tmp_path, gpus=1)
    assert "step:2" in out
    assert "opdkit/q_weight_nonzero_fraction" in out  # the driver's SC weights over the whole step ran
    assert "opdkit/sdpo_reprompt_fraction" in out  # teacher contexts were built
