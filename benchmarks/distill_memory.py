"""Peak extra memory and wall time of one distillation loss forward + backward (the chunked losses).

Cases (each runs in its own subprocess, one after another, on the same random inputs):

    straightforward          full logits h·Wᵀ (student with grad, teacher under no-grad), opdkit's
                             reference ``distillation_token_loss`` (log_softmax -> JSD), IS clip,
                             ``self_distillation_loss``
    straightforward_top100   the same with the student's top-100 + tail support
    chunked_full             ``opdkit.core.chunked``: full-vocabulary JSD from hidden states, chunk by chunk
    chunked_top100           ``opdkit.core.chunked``: top-100 + tail JSD from hidden states
    trl_sdpo_full            TRL 1.16 ``experimental.sdpo.loss_utils``: full-logit loss + IS clip +
                             SDPOTrainer's per-sequence aggregation, on logits h·Wᵀ (skipped when trl
                             is not importable)
    trl_sdpo_top100          the same with ``compute_topk_self_distillation_loss`` (k = 100, tail)
    trl_gkd_jsd              TRL 1.16 ``GKDTrainer.generalized_jsd_loss`` (β = 0.5, no IS clip)

Every case computes the SDPO loss of docs/algorithms.md §4.7 (JSD α = 0.5, IS clip 2 with old log-probs,
per-sequence token mean), except GKD (its own JSD, no IS), and starts from the same inputs: student hidden
states (N, T, H) and head (V, H) with grad, teacher hidden states and head (a perturbed copy, as an EMA
teacher), token ids and old log-probs; the backward pass produces grad h and grad W in every case.

Memory. CPU: peak RSS of the case's process above its RSS just before the step. After a small warm-up call
(kernels and allocator pools loaded) every file-backed mapping is faulted in (madvise MADV_POPULATE_READ, so
library code first run in the step does not count), then writing "5" to /proc/self/clear_refs resets the
kernel's high-water mark VmHWM; peak extra = VmHWM after the step − VmRSS before it. GPU:
torch.cuda.max_memory_allocated() − memory_allocated() before the step, after reset_peak_memory_stats().
"× full" is in units of one (N, T, V) tensor of the run's dtype (float32 on CPU, bfloat16 on GPU). The peak
includes grad W, the (V, H) parameter gradient any implementation must produce (H / (N·T) full tensors;
0.75× at H = 1536, N·T = 2048); the column "without grad W" subtracts it. A CPU case limits its own address
space (RLIMIT_AS) to its size before the step + ``--max-gb``, so a case that needs more fails with an
allocation error ("OOM") instead of pressing a shared machine.

Time: wall seconds of the measured step (CPU: one step per process, one intra-op thread, the fastest of
``--rounds`` processes run round-robin over the cases; GPU: median of ``--repeats`` steps after a warm-up
step, synchronised).

Commands (from the repository root; TRL only in the separate benchmark environment, see RESULTS.md):

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv-bench/bin/python benchmarks/distill_memory.py
    PYTHONPATH=src python benchmarks/distill_memory.py --device cuda          # bf16, 8 × 2048, H 1536
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from opdkit.core.chunked import (
    ChunkSettings,
    DivergenceSpec,
    LinearHead,
    LossWeighting,
    StudentInputs,
    TeacherHidden,
    chunked_distillation_loss,
)
from opdkit.core.divergences import distillation_token_loss
from opdkit.core.losses import truncated_is_weight
from opdkit.core.objectives import self_distillation_loss
from opdkit.core.registry import Registry

ALPHA, IS_CLIP, TOP_K = 0.5, 2.0, 100


@dataclass(frozen=True)
class Config:
    device: str = "cpu"
    n: int = 4
    t: int = 512
    hidden: int = 1536
    vocab: int = 151936
    chunk_tokens: int | None = None
    repeats: int = 1
    max_gb: float = 16.0
    seed: int = 0

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.device == "cuda" else torch.float32


@dataclass
class Inputs:
    hidden: torch.Tensor
    weight: torch.Tensor
    teacher_hidden: torch.Tensor
    teacher_weight: torch.Tensor
    ids: torch.Tensor
    old_logp: torch.Tensor
    mask: torch.Tensor


def make_inputs(cfg: Config, n: int, t: int, vocab: int) -> Inputs:
    """Random inputs with logits of std ~2; the teacher is a perturbed copy of the student (like an EMA)."""
    g = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    kw = {"device": cfg.device, "generator": g}
    hidden = torch.randn(n, t, cfg.hidden, **kw)
    weight = torch.randn(vocab, cfg.hidden, **kw).mul_(2.0 / cfg.hidden**0.5)
    teacher_weight = torch.randn(vocab, cfg.hidden, **kw).mul_(0.5 / cfg.hidden**0.5).add_(weight)
    teacher_hidden = torch.randn(n, t, cfg.hidden, **kw).mul_(0.5).add_(hidden)
    return Inputs(
        hidden=hidden.to(cfg.dtype).requires_grad_(True),
        weight=weight.to(cfg.dtype).requires_grad_(True),
        teacher_hidden=teacher_hidden.to(cfg.dtype),
        teacher_weight=teacher_weight.to(cfg.dtype),
        ids=torch.randint(0, vocab, (n, t), **kw),
        old_logp=torch.randn(n, t, **kw).mul_(0.5).sub_(12.0),  # ~log(1/V): ratios around 1, some clipped
        mask=torch.ones(n, t, device=cfg.device),
    )


CASES: Registry[Callable[[Inputs, Config], torch.Tensor]] = Registry("case")
ORDER = (
    "straightforward", "straightforward_top100", "chunked_full", "chunked_top100",
    "trl_sdpo_full", "trl_sdpo_top100", "trl_gkd_jsd",
)  # fmt: skip


def _logits(inp: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    z_s = inp.hidden @ inp.weight.T
    with torch.no_grad():
        z_t = inp.teacher_hidden @ inp.teacher_weight.T
    return z_s, z_t


def _straightforward(inp: Inputs, top_k: int | None) -> torch.Tensor:
    z_s, z_t = _logits(inp)
    div = distillation_token_loss(z_s, z_t, alpha=ALPHA, top_k=top_k, tail=True)
    logp = z_s.float().gather(-1, inp.ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z_s.float(), dim=-1)
    is_weight = truncated_is_weight(logp, inp.old_logp, cap=IS_CLIP)
    return self_distillation_loss(div, inp.mask, is_weight_N_T=is_weight).loss


@CASES.register("straightforward")
def straightforward_full(inp: Inputs, cfg: Config) -> torch.Tensor:
    return _straightforward(inp, None)


@CASES.register("straightforward_top100")
def straightforward_top100(inp: Inputs, cfg: Config) -> torch.Tensor:
    return _straightforward(inp, TOP_K)


def _chunked(inp: Inputs, cfg: Config, top_k: int | None) -> torch.Tensor:
    return chunked_distillation_loss(
        StudentInputs(inp.hidden, LinearHead(inp.weight), token_ids_N_T=inp.ids),
        TeacherHidden(inp.teacher_hidden, LinearHead(inp.teacher_weight)),
        LossWeighting(inp.mask, old_logp_N_T=inp.old_logp, is_clip=IS_CLIP),
        ChunkSettings(divergence=DivergenceSpec(alpha=ALPHA, top_k=top_k), chunk_tokens=cfg.chunk_tokens),
    ).loss


@CASES.register("chunked_full")
def chunked_full(inp: Inputs, cfg: Config) -> torch.Tensor:
    return _chunked(inp, cfg, None)


@CASES.register("chunked_top100")
def chunked_top100(inp: Inputs, cfg: Config) -> torch.Tensor:
    return _chunked(inp, cfg, TOP_K)


def _trl_sdpo(inp: Inputs, top_k: int | None) -> torch.Tensor:
    """As TRL's SDPOTrainer._compute_self_distillation_loss does it (temperature 1)."""
    from trl.experimental.sdpo import loss_utils
    from trl.trainer.utils import selective_log_softmax

    z_s, z_t = _logits(inp)
    if top_k is None:
        per_token = loss_utils.compute_full_logit_self_distillation_loss(z_s, z_t, distillation_alpha=ALPHA)
    else:
        per_token = loss_utils.compute_topk_self_distillation_loss(
            z_s, z_t, distillation_topk=top_k, distillation_alpha=ALPHA, distillation_add_tail=True
        )
    logp = selective_log_softmax(z_s, inp.ids)
    per_token = loss_utils.apply_importance_sampling_clipping(per_token, logp, inp.old_logp, IS_CLIP)
    return ((per_token * inp.mask).sum(-1) / inp.mask.sum(-1).clamp(min=1.0)).mean()


@CASES.register("trl_sdpo_full")
def trl_sdpo_full(inp: Inputs, cfg: Config) -> torch.Tensor:
    return _trl_sdpo(inp, None)


@CASES.register("trl_sdpo_top100")
def trl_sdpo_top100(inp: Inputs, cfg: Config) -> torch.Tensor:
    return _trl_sdpo(inp, TOP_K)


@CASES.register("trl_gkd_jsd")
def trl_gkd_jsd(inp: Inputs, cfg: Config) -> torch.Tensor:
    from trl.experimental.gkd import GKDTrainer

    z_s, z_t = _logits(inp)
    labels = torch.where(inp.mask.bool(), inp.ids, torch.full_like(inp.ids, -100))
    return GKDTrainer.generalized_jsd_loss(z_s, z_t, labels=labels, beta=ALPHA)


# ---------------------------------------------------------------------------------------------- measuring


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


MADV_POPULATE_READ = 22  # Linux >= 5.14


def _prefault_file_mappings() -> None:
    """Map every page of the process's file-backed mappings (libtorch, MKL, ...) into its page tables now.

    Code pages of kernels first used in the measured step would otherwise enter RSS during it and count
    as "extra" (measured: up to ~120 MiB, varying from run to run). Mappings that refuse are skipped."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 6 or not fields[5].startswith("/") or "r" not in fields[1]:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            libc.madvise(start, end - start, MADV_POPULATE_READ)


def _limit_address_space(extra_bytes: float) -> None:
    """Cap this process at its current virtual size + ``extra_bytes`` (failed malloc, not OOM killer)."""
    limit = _status_kb("VmSize") * 1024 + int(extra_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _step(case: Callable, inp: Inputs, cfg: Config) -> tuple[float, float]:
    """Forward + backward once; returns (seconds, loss). Gradients are dropped after reading the time."""
    inp.hidden.grad = inp.weight.grad = None
    start = time.perf_counter()
    loss = case(inp, cfg)
    loss.backward()
    if cfg.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, float(loss.detach())


def _measure_cpu(case: Callable, cfg: Config) -> dict:
    torch.set_num_threads(1)
    _step(case, make_inputs(cfg, 1, 8, 1000), cfg)  # warm-up: load kernels, touch the code paths
    inp = make_inputs(cfg, cfg.n, cfg.t, cfg.vocab)
    _prefault_file_mappings()
    _limit_address_space(cfg.max_gb * 2**30)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before, file_before = _status_kb("VmRSS") * 1024, _status_kb("RssFile") * 1024
    seconds, loss = _step(case, inp, cfg)
    return {
        "peak_bytes": _status_kb("VmHWM") * 1024 - before, "seconds": seconds, "loss": loss,
        "file_pages_added_bytes": _status_kb("RssFile") * 1024 - file_before,
    }  # fmt: skip


def _measure_cuda(case: Callable, cfg: Config) -> dict:
    inp = make_inputs(cfg, cfg.n, cfg.t, cfg.vocab)
    _step(case, inp, cfg)  # warm-up at full size
    inp.hidden.grad = inp.weight.grad = None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    seconds, loss = _step(case, inp, cfg)
    peak = torch.cuda.max_memory_allocated() - before
    times = [seconds] + [_step(case, inp, cfg)[0] for _ in range(cfg.repeats - 1)]
    return {"peak_bytes": peak, "seconds": statistics.median(times), "loss": loss}


def run_case(name: str, cfg: Config) -> dict:
    """The child process: one case, one JSON result."""
    case = CASES.get(name)
    try:
        result = (_measure_cuda if cfg.device == "cuda" else _measure_cpu)(case, cfg)
        result["status"] = "ok"
    except ImportError as err:
        result = {"status": f"skipped ({err.name or err} not importable)"}
    except (MemoryError, RuntimeError) as err:
        if "memory" not in str(err).lower() and not isinstance(err, MemoryError):
            raise
        result = {"status": f"OOM (> {cfg.max_gb:g} GB)" if cfg.device == "cpu" else "OOM"}
    return {"case": name, **result}


# ---------------------------------------------------------------------------------------------- driver


def _available_gb() -> float:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) for line in f}
    return info["MemAvailable"] / 2**20


def _spawn(name: str, cfg: Config) -> dict:
    args = [sys.executable, os.path.abspath(__file__), "--case", name, "--config", json.dumps(asdict(cfg))]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"case": name, "status": f"failed: {tail[0][:80]}"}
    return json.loads(lines[-1])


def _combine(runs: list[dict]) -> dict:
    """Several processes of one case: the fastest time (least disturbed by other jobs), the largest peak."""
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        return runs[-1]
    return {
        **ok[0], "seconds": min(r["seconds"] for r in ok), "peak_bytes": max(r["peak_bytes"] for r in ok),
        "runs": len(ok), "all_seconds": [r["seconds"] for r in ok],
    }  # fmt: skip


def _ratio(num: float | None, den: float | None) -> str:
    return f"{num / den:.2f}" if num and den else "–"


def _support(name: str) -> str:
    return "top100" if name.endswith("top100") else "full"


def format_table(results: list[dict], cfg: Config) -> str:
    """Markdown table; ratios are against the straightforward and TRL SDPO cases of the same support."""
    elem = torch.finfo(cfg.dtype).bits // 8
    full = cfg.n * cfg.t * cfg.vocab * elem
    grad_w = cfg.vocab * cfg.hidden * elem
    ok = {r["case"]: r for r in results if r.get("status") == "ok"}

    def base(prefix: str, name: str) -> dict:
        suffix = "_top100" if _support(name) == "top100" else ("" if prefix == "straightforward" else "_full")
        return ok.get(prefix + suffix, {})

    head = (
        "| case | peak extra MiB | × full | × full without grad W | s | mem / straightforward"
        " | time / straightforward | mem / TRL SDPO | time / TRL SDPO | loss |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for r in results:
        if r.get("status") != "ok":
            rows.append(f"| {r['case']} | {r.get('status')} | | | | | | | | |")
            continue
        sf, trl = base("straightforward", r["case"]), base("trl_sdpo", r["case"])
        rows.append(
            f"| {r['case']} | {r['peak_bytes'] / 2**20:,.0f} | {r['peak_bytes'] / full:.2f} | "
            f"{(r['peak_bytes'] - grad_w) / full:.2f} | {r['seconds']:.2f} | "
            f"{_ratio(r['peak_bytes'], sf.get('peak_bytes'))} | "
            f"{_ratio(r['seconds'], sf.get('seconds'))} | {_ratio(r['peak_bytes'], trl.get('peak_bytes'))} | "
            f"{_ratio(r['seconds'], trl.get('seconds'))} | {r['loss']:.6g} |"
        )
    note = (
        f"\none full (N, T, V) tensor = {full / 2**20:,.0f} MiB; grad W (V, H) = {grad_w / 2**20:,.0f} MiB"
        f" = {grad_w / full:.2f}× full, included in every peak"
    )
    return "\n".join(rows) + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--cases", default=",".join(ORDER), help="comma-separated case names")
    parser.add_argument("--n", type=int, help="sequences (default 4 on CPU, 8 on GPU)")
    parser.add_argument("--t", type=int, help="tokens per sequence (default 512 on CPU, 2048 on GPU)")
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--chunk-tokens", type=int, help="rows per chunk (default: opdkit's; 1024 on GPU)")
    parser.add_argument("--repeats", type=int, help="timed steps on GPU (median; default 5)")
    parser.add_argument("--rounds", type=int, default=1, help="processes per case, round-robin (min time)")
    parser.add_argument(
        "--max-gb", type=float, default=16.0, help="CPU: a case's allocation cap above inputs"
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--from-json", help="only print the table of results saved with --json")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # child process
        print(json.dumps(run_case(args.case, Config(**json.loads(args.config)))))
        return
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        print(f"# {saved['device']}; {Config(**saved['config'])}")
        print(format_table(saved["results"], Config(**saved["config"])))
        return
    gpu = args.device == "cuda"
    cfg = Config(
        device=args.device, n=args.n or (8 if gpu else 4), t=args.t or (2048 if gpu else 512),
        hidden=args.hidden, vocab=args.vocab, chunk_tokens=args.chunk_tokens or (1024 if gpu else None),
        repeats=args.repeats or (5 if gpu else 1), max_gb=args.max_gb,
    )  # fmt: skip
    device_name = torch.cuda.get_device_name() if gpu else f"CPU, {os.cpu_count()} cores, 1 intra-op thread"
    print(f"# {device_name}; {cfg}", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in args.cases.split(",")}
    for _ in range(args.rounds):  # round-robin, so a busy spell of the machine hits every case alike
        for name, done in runs.items():
            if done and done[-1].get("status") != "ok":
                continue  # OOM or skipped once: the same again
            if not gpu:  # never more than the machine can spare right now
                cfg = Config(**{**asdict(cfg), "max_gb": min(args.max_gb, max(_available_gb() - 3.0, 1.0))})
            done.append(_spawn(name, cfg))
            print(json.dumps(done[-1]), flush=True)
    results = [_combine(done) for done in runs.values()]
    print(format_table(results, cfg))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"config": asdict(cfg), "device": device_name, "results": results}, f, indent=1)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
