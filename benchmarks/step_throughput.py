"""Training steps per second: opdkit's ``grpo`` and ``sdpo`` against TRL 1.16's ``GRPOTrainer`` and
``trl.experimental.sdpo.SDPOTrainer``.

Cases (each run of a case is its own process; ``--rounds`` rounds, the case order rotated every round so
that load from other jobs on the shared machine falls on every case alike):

    opdkit_grpo   opdkit.train.train with method.name=grpo
    trl_grpo      trl.GRPOTrainer(...).train()
    opdkit_sdpo   opdkit.train.train with method.name=sdpo
    trl_sdpo      trl.experimental.sdpo.SDPOTrainer(...).train()
    base_grpo     with ``--base-src DIR``: opdkit imported from another source tree (e.g. an earlier commit,
    base_sdpo     ``git archive <commit> src | tar -x -C /tmp/base``), to measure a change in the same run

The same work in both frameworks:

- one saved tiny model (``opdkit.models.build_tiny_model``, float32) and its character tokenizer, loaded from
  the same directory by both; one intra-op thread (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``);
- the same prompts (synthetic 3-digit addition, 39 prompt tokens each through the chat template), Q prompts ×
  G rollouts per step, sampling at temperature 1 with top-p 1 and top-k off with a KV cache, no vLLM (TRL:
  Hugging Face ``generate``; opdkit: its own decode loop, ``opdkit.rollout.decode``, which samples from the
  same distribution with the same model forwards, one per new token);
- every response exactly ``--max-new-tokens`` long: the saved tokenizer's EOS is a token past the model's
  vocabulary, so no response ends early (checked: each case reports its mean response length, and the run
  fails if it is not exactly the limit);
- a reward with a mixed pass rate for a random model (``bench/parity``: success when the first character of
  the response has an even code), so that every step updates in both frameworks: no zero-advantage GRPO step
  is skipped by opdkit, and SDPO has successful siblings to put in nearly every teacher context;
- one optimizer step (AdamW, weight decay 0.01, constant learning rate, gradient clip 1.0) per generation
  batch, all Q·G rows in one forward/backward, no gradient checkpointing, float32 (TRL's ``bf16`` is on by
  default: turned off), no reference model (GRPO β = 0), no evaluation, no checkpoint inside the timed steps;
- GRPO: PPO clip 0.2 / 0.28, token-mean over the batch (TRL ``loss_type="dapo"``), group std normalisation;
- SDPO: EMA self-teacher (rate 0.05, updated after every step), top-100 + tail JSD α = 0.5, IS clip 2,
  per-sequence token mean, a successful sibling as demonstration (never the row itself), the same reprompt
  template text (TRL's templates set to opdkit's wording, so teacher prompts have the same length).

Differences that remain (none changes the amount of model work): opdkit's GRPO has a dual clip (c = 3), an
elementwise ``min`` TRL does not do; each framework draws its own prompts (all have the same token length)
and samples its own responses (the rewards, hence which rows have a teacher context, differ by chance).

Timing: wall time between the ends of consecutive steps (opdkit: its ``progress`` callback, called after a
step's metrics are written; TRL: a ``TrainerCallback.on_step_end``), so everything the loop does once per
step counts. The first ``--warmup`` steps of each process are dropped; the table gives the median over all
measured steps of all rounds. Each case also checks that every step ran on one intra-op thread and made an
update. ``--profile CASE`` runs one case in this process under cProfile (measured
steps only) and prints where the time goes.

Commands (TRL only in the separate benchmark environment; see RESULTS.md):

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv-bench/bin/python benchmarks/step_throughput.py --rounds 3
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv-bench/bin/python benchmarks/step_throughput.py --profile trl_sdpo
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

CASES = ("opdkit_grpo", "trl_grpo", "opdkit_sdpo", "trl_sdpo")
VERIFIER = "bench/parity"
REPROMPT_INSTRUCTION = "\n\nCorrectly solve the original question."  # opdkit's SelfTeacherOptions default
SOLUTION_TEMPLATE = "\nCorrect solution:\n\n{demonstration}"  # opdkit's SelfTeacherOptions default


@dataclass(frozen=True)
class Bench:
    """What every case runs: model size, batch, lengths, optimizer, steps."""

    prompts: int = 4  # Q
    generations: int = 8  # G
    max_new_tokens: int = 32
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 512
    lr: float = 1e-4
    warmup: int = 3
    measured: int = 10
    seed: int = 0

    @property
    def steps(self) -> int:
        return self.warmup + self.measured


# ------------------------------------------------------------------------------------------ shared inputs


def register_verifier() -> None:
    """``bench/parity``: a reward a random character model passes about half the time."""
    from opdkit.rewards.base import VERIFIERS, Verdict

    def factory():
        def verify(completion: str, ground_truth: str, *, truncated: bool = False) -> Verdict:
            ok = bool(completion) and ord(completion[0]) % 2 == 0
            return Verdict(score=float(ok), correct=ok, pred=completion[:1] or None)

        return verify

    if VERIFIER not in VERIFIERS:
        VERIFIERS.add(VERIFIER, factory)


def prepare_inputs(root: Path, bench: Bench) -> None:
    """Save the tiny model (with an EOS it cannot emit) and the prompts under ``root``."""
    from opdkit.models import TinyModelConfig, build_char_tokenizer, build_tiny_model, save_pretrained_atomic
    from opdkit.tasks import TaskSpec, generate

    tok = build_char_tokenizer()
    config = TinyModelConfig(
        hidden_size=bench.hidden, num_layers=bench.layers, num_heads=bench.heads,
        intermediate_size=bench.intermediate,
    )  # fmt: skip
    model = build_tiny_model(config, tok, seed=bench.seed)
    # Every response is exactly max_new_tokens long: EOS becomes a token the model cannot emit (an id past its
    # vocabulary), so neither framework's sampler can stop early. (A ``suppress_tokens`` entry in the saved
    # generation config would only bind TRL: opdkit samples with a clean generation config on purpose.)
    tok.add_special_tokens({"eos_token": "<never>"})
    model.config.eos_token_id = model.generation_config.eos_token_id = tok.eos_token_id
    assert tok.eos_token_id >= model.config.vocab_size
    save_pretrained_atomic(model, tok, root / "model")
    rows = generate(TaskSpec(task="addition", difficulty=3, style="boxed"), n=512, seed=bench.seed)
    with open(root / "train.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({"prompt": r["prompt"], "solution": r["solution"], "verifier": VERIFIER,
                                "data_source": "bench"}) + "\n")  # fmt: skip


def load_rows(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ the cases


class StepClock:
    """Timestamps of step ends -> the durations of the steps after the warm-up; optional profiler."""

    def __init__(self, warmup: int, steps: int, profiler: Any = None) -> None:
        self.warmup, self.steps, self.profiler = warmup, steps, profiler
        self.ends: list[float] = []
        self.checks: list[dict[str, float]] = []

    def tick(self, check: dict[str, float]) -> None:
        import torch

        self.ends.append(time.perf_counter())
        self.checks.append({**check, "threads": torch.get_num_threads()})
        if self.profiler is not None and len(self.ends) == self.warmup:
            self.profiler.enable()
        if self.profiler is not None and len(self.ends) == self.steps:
            self.profiler.disable()

    def durations(self) -> list[float]:
        return [b - a for a, b in zip(self.ends[self.warmup - 1 :], self.ends[self.warmup :])]


def run_opdkit(method: str, root: Path, bench: Bench, clock: StepClock) -> None:
    from opdkit.train import load_config, train

    overrides = [
        f"method.name={method}", f"model.student={root / 'model'}", "model.device=cpu", "threads=1",
        f"steps={bench.steps}", f"seed={bench.seed}", f"rollout.prompts_per_step={bench.prompts}",
        f"rollout.n={bench.generations}", f"rollout.max_new_tokens={bench.max_new_tokens}",
        f"data.train={root / 'train.jsonl'}", "data.eval=", "eval.at_start=false", f"optim.lr={bench.lr}",
        "optim.weight_decay=0.01", "optim.grad_clip=1.0", "log_every=1", "checkpoint_every=0",
    ]  # fmt: skip

    def progress(step: int, row: dict) -> None:
        clock.tick({"length": row["response/length_mean"], "reward": row["reward/mean"],
                    "updated": row["train/updates"]})  # fmt: skip

    with tempfile.TemporaryDirectory() as run_dir:
        train(load_config(None, overrides), Path(run_dir) / "run", progress=progress)


def _trl_common(bench: Bench, out_dir: str) -> dict[str, Any]:
    return dict(
        output_dir=out_dir, per_device_train_batch_size=bench.prompts * bench.generations,
        gradient_accumulation_steps=1, steps_per_generation=1, num_generations=bench.generations,
        max_completion_length=bench.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=bench.lr, weight_decay=0.01, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=1.0, max_steps=bench.steps, logging_steps=1, save_strategy="no", report_to="none",
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True, seed=bench.seed, model_init_kwargs={"dtype": "float32"},
    )  # fmt: skip


def _trl_sdpo_args(bench: Bench) -> dict[str, Any]:
    return dict(
        distillation_weight=1.0, distillation_mode="topk_logits", distillation_topk=100,
        distillation_add_tail=True, distillation_alpha=0.5, distillation_is_clip=2.0,
        teacher_model_kind="ema", teacher_update_rate=0.05, teacher_sync_steps=1,
        dont_reprompt_on_self_success=True, remove_thinking_from_demonstration=True, max_reprompt_len=10240,
        include_environment_feedback=False, success_reward_threshold=1.0,
        reprompt_template="{prompt}{solution}{feedback}" + REPROMPT_INSTRUCTION,
        solution_template=SOLUTION_TEMPLATE.replace("{demonstration}", "{successful_previous_attempt}"),
        max_prompt_length=None,
    )  # fmt: skip


def run_trl(method: str, root: Path, bench: Bench, clock: StepClock) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

    from opdkit.rewards import make_verifier, trl_reward

    class Tick(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:  # logged after on_step_end of the same step
                clock.checks[-1]["length"] = logs["completions/mean_length"]

        def on_step_end(self, args, state, control, **kwargs):
            clock.tick({})

    model_path = str(root / "model")
    tok = AutoTokenizer.from_pretrained(model_path)
    data = Dataset.from_list([{"prompt": r["prompt"], "solution": r["solution"]} for r in load_rows(root)])
    reward = trl_reward(make_verifier(VERIFIER), name="parity")
    with tempfile.TemporaryDirectory() as out_dir:
        if method == "grpo":
            args = GRPOConfig(**_trl_common(bench, out_dir), beta=0.0, epsilon=0.2, epsilon_high=0.28,
                              loss_type="dapo", scale_rewards="group", num_iterations=1)  # fmt: skip
            trainer_type = GRPOTrainer
        else:
            args = SDPOConfig(**_trl_common(bench, out_dir), **_trl_sdpo_args(bench))
            trainer_type = SDPOTrainer
        trainer = trainer_type(model=model_path, reward_funcs=[reward], args=args, train_dataset=data,
                               processing_class=tok, callbacks=[Tick()])  # fmt: skip
        trainer.train()


def run_case(case: str, root: Path, bench: Bench, profiler: Any = None) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    register_verifier()
    framework, method = case.split("_", 1)
    clock = StepClock(bench.warmup, bench.steps, profiler)
    (run_trl if framework == "trl" else run_opdkit)(method, root, bench, clock)
    lengths = {c.get("length") for c in clock.checks}
    if lengths != {float(bench.max_new_tokens)}:
        raise RuntimeError(f"{case}: response lengths {lengths}, expected all {bench.max_new_tokens}")
    if {c["threads"] for c in clock.checks} != {1} or {c.get("updated", 1.0) for c in clock.checks} != {1.0}:
        raise RuntimeError(f"{case}: not one thread and one update every step: {clock.checks}")
    return {"case": case, "durations": clock.durations(), "checks": clock.checks}


# ------------------------------------------------------------------------------------------ the driver


def run_in_subprocess(case: str, root: Path, bench: Bench, base_src: str) -> dict[str, Any]:
    bench_json = json.dumps(asdict(bench))
    cmd = [sys.executable, __file__, "--worker", case, "--root", str(root), "--bench", bench_json]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    if case.startswith("base_"):  # another opdkit source tree (e.g. an earlier commit) on the same inputs
        env["PYTHONPATH"] = base_src
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(results: dict[str, list[list[float]]], bench: Bench) -> list[dict[str, Any]]:
    rows = []
    for case, rounds in results.items():
        pooled = [d for r in rounds for d in r]
        med = statistics.median(pooled)
        rows.append({
            "case": case, "median_s": med, "steps_per_s": 1.0 / med,
            "round_medians_s": [statistics.median(r) for r in rounds], "steps": len(pooled),
        })  # fmt: skip
    return rows


def print_table(rows: list[dict[str, Any]], bench: Bench) -> None:
    by_case = {r["case"]: r for r in rows}
    print(f"# {bench}")
    print("| case | median s/step | steps/s | per-round medians (s) | steps | steps/s ÷ TRL's | ÷ base's |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        framework, method = r["case"].split("_", 1)
        ratios = []
        for ref in ("trl", "base"):
            other = by_case.get(f"{ref}_{method}")
            mine = framework not in ("trl", ref) and other is not None
            ratios.append(f"{r['steps_per_s'] / other['steps_per_s']:.2f}" if mine else "")
        rounds = ", ".join(f"{m:.3f}" for m in r["round_medians_s"])
        print(f"| {r['case']} | {r['median_s']:.3f} | {r['steps_per_s']:.2f} | {rounds} | {r['steps']} | "
              f"{ratios[0]} | {ratios[1]} |")  # fmt: skip


# Where the time goes: (label, file path suffix, function name) of the functions whose cumulative time is
# reported per step by --profile. Indented labels are parts of the label above them.
PHASES = {
    "opdkit": [
        ("rollouts (sample, verify, old log-probs)", "opdkit/train/rollouts.py", "collect_rollouts"),
        ("  shared prompt prefill", "opdkit/rollout/kvcache.py", "decode_prefill"),
        ("  decode loop (rollout.decode)", "opdkit/rollout/decode.py", "decode"),
        ("    token draw (inverse CDF)", "opdkit/rollout/decode.py", "inverse_cdf_draw"),
        ("  HF generate (models without a plain cache)", "transformers/generation/utils.py", "generate"),
        ("  old log-probs forward", "opdkit/train/student.py", "old_logprobs"),
        ("prepare (advantages / teacher prompts)", "opdkit/train/methods/", "prepare"),
        ("updates (run_updates)", "opdkit/train/update.py", "run_updates"),
        ("  loss: student forward", "opdkit/train/student.py", "student"),
        ("  loss: self-teacher forward", "opdkit/train/student.py", "self_teacher"),
        ("  loss: chunked divergence", "opdkit/core/chunked.py", "chunked_distillation_loss"),
        ("  loss: chunked log-probs", "opdkit/core/chunked.py", "chunked_token_logp"),
        ("  backward", "torch/_tensor.py", "backward"),
        ("  optimizer step", "torch/optim/adam.py", "step"),
        ("  EMA teacher update", "opdkit/teachers/self_teacher.py", "update"),
        ("metrics row written", "opdkit/train/rundir.py", "log"),
    ],
    "trl": [
        ("rollouts (generate, rewards, advantages, teacher prompts)", "trl/", "_prepare_inputs"),
        ("  HF generate", "transformers/generation/utils.py", "generate"),
        ("  rewards", "trl/", "_calculate_rewards"),
        ("  teacher prompts", "trl/experimental/sdpo/sdpo_trainer.py", "build"),
        ("compute_loss", "trl/", "compute_loss"),
        ("  student/teacher forwards", "trl/experimental/sdpo/sdpo_trainer.py", "_forward_logits"),
        ("  policy forward (log-probs)", "trl/trainer/grpo_trainer.py", "_get_per_token_logps_and_entropies"),
        ("  distillation loss", "trl/experimental/sdpo/sdpo_trainer.py", "_compute_self_distillation_loss"),
        ("backward", "torch/_tensor.py", "backward"),
        ("optimizer step", "torch/optim/adam.py", "step"),
        ("EMA teacher sync", "trl/experimental/sdpo/teacher_sync.py", "on_step_end"),
        ("logging", "transformers/trainer.py", "_maybe_log_save_evaluate"),
    ],
}


def phase_table(stats: Any, framework: str, steps: int, step_s: float) -> None:
    """Cumulative seconds per step of each ``PHASES`` entry found in the profile (functions called
    recursively are counted once, at their outermost call)."""
    print(f"| phase | s/step | share of the profiled step ({step_s:.3f} s) |")
    print("|---|---|---|")
    for label, path, name in PHASES["trl" if framework == "trl" else "opdkit"]:
        hits = [v[3] for (file, _, func), v in stats.stats.items() if func == name and path in file]
        if hits:
            per_step = sum(hits) / steps
            print(f"| {label} | {per_step:.4f} | {100 * per_step / step_s:.0f} % |")


def profile_case(case: str, root: Path, bench: Bench, top: int) -> None:
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    result = run_case(case, root, bench, profiler)
    steps = len(result["durations"])
    step_s = statistics.median(result["durations"])
    print(f"{case}: median {step_s:.3f} s/step over {steps} profiled steps ({bench})")
    stats = pstats.Stats(profiler)
    phase_table(stats, case.split("_", 1)[0], steps, step_s)
    if top:
        stats.sort_stats("cumulative").print_stats(top)
        stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(Bench):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument(
        "--base-src", default="", help="also run base_grpo/base_sdpo with opdkit from this src dir"
    )
    ap.add_argument("--json", default="")
    ap.add_argument("--profile", default="", help="run one case in-process under cProfile")
    ap.add_argument("--top", type=int, default=0, help="with --profile: also print the top N functions")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--root", default="", help=argparse.SUPPRESS)
    ap.add_argument("--bench", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        bench = Bench(**json.loads(a.bench))
        print(json.dumps(run_case(a.worker, Path(a.root), bench)))
        return
    bench = Bench(**{f.name: getattr(a, f.name) for f in fields(Bench)})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare_inputs(root, bench)
        if a.profile:
            profile_case(a.profile, root, bench, a.top)
            return
        cases = a.cases.split(",") + (["base_grpo", "base_sdpo"] if a.base_src else [])
        results: dict[str, list[list[float]]] = {c: [] for c in cases}
        for r in range(a.rounds):
            order = cases[r % len(cases) :] + cases[: r % len(cases)]
            for case in order:
                out = run_in_subprocess(case, root, bench, a.base_src)
                results[case].append(out["durations"])
                print(f"round {r + 1} {case}: median {statistics.median(out['durations']):.3f} s/step",
                      file=sys.stderr, flush=True)  # fmt: skip
    rows = summarise(results, bench)
    print_table(rows, bench)
    if a.json:
        Path(a.json).write_text(json.dumps({"bench": asdict(bench), "rows": rows, "raw": results}, indent=1))


if __name__ == "__main__":
    main()
