"""``opdkit plan`` against hand arithmetic for the paper presets (model dimensions from their config.json).

Qwen3-8B (paper/sc_sdpo): hidden h = 4096, L = 36 layers, a = 32 heads, k = 8 key/value heads, d = 128,
MLP I = 12288, V = 151936, untied head. Parameters per layer:
    q 4096·4096 = 16,777,216; k+v 2·4096·1024 = 8,388,608; o 16,777,216; MLP 3·4096·12288 = 150,994,944;
    norms 2·4096 = 8,192  ->  192,946,176;  × 36 = 6,946,062,336
    embeddings + head 2·151936·4096 = 1,244,659,712; final norm 4096  ->  P = 8,190,726,144 (published: 8.2 B)
DeepSeek-R1-Distill-Qwen-1.5B (paper/scope): h = 1536, L = 28, a = 12, k = 2, d = 128, I = 8960, untied:
    q 2,359,296; k+v 786,432; o 2,359,296; MLP 41,287,680; norms 3,072 -> 46,795,776; × 28 = 1,310,281,728
    embeddings + head 2·151936·1536 = 466,747,392; + 1536 -> P = 1,777,030,656 (published: 1.78 B)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opdkit.cli import app
from opdkit.train import load_config
from opdkit.train.plan import GB, plan_run

QWEN3_8B = {"model_type": "qwen3", "hidden_size": 4096, "num_hidden_layers": 36, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288, "vocab_size": 151936,
            "tie_word_embeddings": False}  # fmt: skip
R1_DISTILL_1P5B = {"model_type": "qwen2", "hidden_size": 1536, "num_hidden_layers": 28,
                   "num_attention_heads": 12, "num_key_value_heads": 2, "intermediate_size": 8960,
                   "vocab_size": 151936, "tie_word_embeddings": False}  # fmt: skip


def _model_dir(tmp_path: Path, name: str, config: dict) -> Path:
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return path


def _within(value: float, expected: float, rel: float = 0.10) -> bool:
    return abs(value - expected) <= rel * expected


def test_sc_sdpo_on_qwen3_8b_matches_hand_arithmetic(tmp_path):
    cfg = load_config("paper/sc_sdpo", [f"model.student={_model_dir(tmp_path, 'q8', QWEN3_8B)}"])
    report = plan_run(cfg, memory_gb=80)
    p = 8_190_726_144
    assert _within(report.plan.parameters, 8.2e9, rel=0.01)
    r, phases = report.plan.resident, report.plan.phases
    assert _within(r["weights (float32 master)"], 4 * p)  # 32.8 GB
    assert _within(r["optimizer (AdamW, float32)"], 8 * p)  # two float32 moments: 65.5 GB
    assert _within(r["self-teacher (float32)"], 4 * p)  # the EMA copy: 32.8 GB
    # KV cache: 2 (k, v) · 36 layers · 8 heads · 128 · 2 bytes = 147,456 B a token; 32 questions × 8 rollouts
    # = 256 rows of 2048 prompt + 2048 response tokens: 256 · 4096 · 147,456 = 154.6 GB
    assert _within(phases["rollout"]["KV cache"], 256 * 4096 * 147_456)
    # evaluation: 16 prompts × k = 16 -> 256 rows of 2048 + 2048 (eval.max_new_tokens 0 = the rollout's)
    assert _within(phases["evaluation"]["KV cache"], 256 * 4096 * 147_456)
    assert _within(phases["update"]["gradients (float32)"], 4 * p)
    assert _within(phases["update"]["autocast weight copies"], 2 * p)
    # activations, micro-batch 1 row × 4096 tokens, bf16, per layer and token (core.memory):
    # attention 2·(2·4096 + 4096 + 2·1024 + 4096 + 4096) = 45,056; MLP 2·(4096 + 4·12288) = 106,496;
    # float32 residual into the 2 norms 4·2·4096 = 32,768 -> 184,320 B; × 36 × 4096 = 27.2 GB
    assert _within(phases["update"]["activations"], 184_320 * 36 * 4096)
    # peak: resident (4 + 8 + 4)·P = 131.1 GB + the rollout's 154.6 GB = 285.7 GB: far over one 80 GB device
    assert _within(report.plan.peak, 16 * p + 256 * 4096 * 147_456)
    assert not report.fits and "opdkit verl-config" in report.text


def test_scope_on_r1_distill_1p5b_matches_hand_arithmetic(tmp_path):
    cfg = load_config("paper/scope", [f"model.student={_model_dir(tmp_path, 'r1', R1_DISTILL_1P5B)}"])
    report = plan_run(cfg, memory_gb=80)
    p = 1_777_030_656
    assert _within(report.plan.parameters, 1.78e9, rel=0.01)
    r, phases = report.plan.resident, report.plan.phases
    assert _within(sum(r.values()), 12 * p)  # weights + AdamW; the teacher is a server, no self-teacher
    assert "external teacher" not in r and "self-teacher (float32)" not in r
    # KV: 2 · 28 · 2 · 128 · 2 B = 28,672 B a token; 256 × 8 = 2048 rows of 2048 + 12288 tokens = 842 GB
    assert _within(phases["rollout"]["KV cache"], 2048 * 14336 * 28_672)
    # evaluation: 16 prompts × k = 32 = 512 rows of 2048 + 32768 tokens = 452 GB
    assert _within(phases["evaluation"]["KV cache"], 512 * 34816 * 28_672)
    assert not report.fits


def test_a_cache_budget_bounds_the_rollout_cache(tmp_path):
    model = _model_dir(tmp_path, "q8", QWEN3_8B)
    cfg = load_config("paper/sc_sdpo", [f"model.student={model}", "rollout.kv_cache_tokens=100000"])
    # 100,000 tokens · 147,456 B = 14.7 GB instead of 154.6 GB
    assert _within(plan_run(cfg, 80).plan.phases["rollout"]["KV cache"], 100_000 * 147_456)


def test_cli_prints_the_plan_and_whether_it_fits(tmp_path):
    model = _model_dir(tmp_path, "q8", QWEN3_8B)
    runner = CliRunner()
    out = runner.invoke(app, ["plan", "paper/sc_sdpo", f"model.student={model}", "--memory-gb", "80"])
    assert out.exit_code == 0, out.output
    assert "does NOT fit in 80 GB" in out.output and "opdkit verl-config" in out.output
    big = runner.invoke(app, ["plan", "paper/sc_sdpo", f"model.student={model}", "--memory-gb", "400"])
    assert "; fits in 400 GB" in big.output


def test_cli_says_what_it_needs_without_a_local_config():
    out = CliRunner().invoke(app, ["plan", "paper/sc_sdpo"])  # model.student: Qwen/Qwen3-8B, not downloaded
    assert out.exit_code == 2 and "not a local model directory or config.json" in out.output


@pytest.mark.parametrize("gb", [1e-3])
def test_peak_is_resident_plus_the_largest_phase(tmp_path, gb):
    cfg = load_config("paper/sc_sdpo", [f"model.student={_model_dir(tmp_path, 'q8', QWEN3_8B)}"])
    plan = plan_run(cfg, gb).plan
    phases = {k: sum(v.values()) for k, v in plan.phases.items()}
    assert plan.peak == sum(plan.resident.values()) + max(phases.values())
    assert plan.peak / GB > gb
