"""``opdkit compare``: methods × seeds with the same seeds and budget, paired by seed, with honest intervals.

Each arm is a config (a preset such as ``tiny/scope`` or a YAML file), labelled by its file name; every arm
runs every seed with the same overrides, into ``<out>/<label>-seed<s>``. A run directory that already holds a
finished run of the same resolved config is read, not rerun, so a comparison can be extended seed by seed or
re-read (``read_arms`` alone, ``opdkit compare --runs DIR``).

The first arm is the baseline A; for every other arm B the differences d_s = metric(B, s) − metric(A, s) of
the final evaluation are compared with ``core.paired.compare_paired``: a percentile bootstrap interval over
the seeds (exact for up to 10 seeds) and an exact sign-flip test; a difference is claimed only when both say
so, otherwise the verdict is "no difference detectable at this budget".

    opdkit compare tiny/opd tiny/scope --seeds 0,1,2 --set steps=20
    opdkit compare --runs runs/compare
"""

from __future__ import annotations

import json
import multiprocessing as mp
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from opdkit.core.paired import PairedComparison, compare_paired

# what must be equal for two runs to be compared: the budget and the evaluation
BUDGET_KEYS = (
    "steps", "rollout.prompts_per_step", "rollout.n", "rollout.max_new_tokens", "eval.k", "eval.num_problems",
    "eval.temperature", "data.train", "data.eval", "data.task", "model.student",
)  # fmt: skip
_RUN_NAME = re.compile(r"^(?P<label>.+)-seed(?P<seed>\d+)$")


@dataclass(frozen=True)
class Arm:
    """One side of the comparison: a label and the config (preset name or YAML path) it runs."""

    label: str
    config: str


def arms_of(configs: Sequence[str]) -> list[Arm]:
    """Arms labelled by the config's file name (``tiny/scope`` -> ``scope``); labels must differ."""
    arms = [Arm(Path(c).name.removesuffix(".yaml"), c) for c in configs]
    labels = [a.label for a in arms]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two configs share a label (their file name): {labels}; rename one")
    return arms


@dataclass(frozen=True)
class FinalValue:
    """A finished run's final value of the metric, the step it was measured at, and its budget keys."""

    label: str
    seed: int
    value: float
    step: int
    budget: dict[str, Any]
    run_dir: Path


def _dotted(cfg: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def read_run(run_dir: Path, metric: str) -> FinalValue:
    """The final ``metric`` of a finished run directory (its ``config.yaml`` and ``metrics.jsonl``)."""
    from opdkit.eval.plots import read_metrics

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    rows = read_metrics(run_dir)
    last = max((r.get("step", 0) for r in rows), default=0)
    if last < cfg["steps"]:
        raise ValueError(f"{run_dir}: unfinished (last logged step {last} of {cfg['steps']})")
    points = [r for r in rows if isinstance(r.get(metric), (int, float))]
    if not points:
        keys = sorted({k for r in rows for k in r if k.startswith("eval/")})
        raise ValueError(f"{run_dir}: no {metric!r} logged; evaluation keys: {', '.join(keys) or 'none'}")
    m = _RUN_NAME.match(run_dir.name)
    label = m["label"] if m else run_dir.name
    budget = {k: _dotted(cfg, k) for k in BUDGET_KEYS}
    return FinalValue(
        label, int(cfg["seed"]), float(points[-1][metric]), int(points[-1]["step"]), budget, run_dir
    )


def read_arms(
    out_dir: str | Path, metric: str, labels: Sequence[str] | None = None
) -> dict[str, list[FinalValue]]:
    """Every ``<label>-seed<s>`` run directory under ``out_dir`` (only ``labels`` when given), by label in the
    order of ``labels`` (else sorted)."""
    found: dict[str, list[FinalValue]] = {}
    for d in sorted(Path(out_dir).iterdir()):
        m = _RUN_NAME.match(d.name)
        if d.is_dir() and m and (labels is None or m["label"] in labels) and (d / "metrics.jsonl").is_file():
            found.setdefault(m["label"], []).append(read_run(d, metric))
    order = list(labels) if labels is not None else sorted(found)
    missing = [label for label in order if label not in found]
    if missing:
        raise ValueError(f"no finished run of {missing} under {out_dir}")
    return {label: sorted(found[label], key=lambda f: f.seed) for label in order}


@dataclass(frozen=True)
class ArmComparison:
    """Arm B against the baseline A on the seeds both ran: per-seed values and the paired comparison."""

    baseline: str
    arm: str
    seeds: tuple[int, ...]
    baseline_values: tuple[float, ...]
    arm_values: tuple[float, ...]
    result: PairedComparison


def check_budgets(arms: dict[str, list[FinalValue]]) -> None:
    """Raise naming the runs and keys when the compared runs differ in budget or evaluation."""
    runs = [f for values in arms.values() for f in values]
    ref = runs[0]
    for f in runs[1:]:
        diff = {k: (ref.budget[k], f.budget[k]) for k in BUDGET_KEYS if ref.budget[k] != f.budget[k]}
        if diff:
            raise ValueError(f"{ref.run_dir} and {f.run_dir} differ in budget: {diff}")
        if f.step != ref.step:
            raise ValueError(
                f"{ref.run_dir} and {f.run_dir}: final evaluation at steps {ref.step} vs {f.step}"
            )


def compare_arms(arms: dict[str, list[FinalValue]], confidence: float = 0.95) -> list[ArmComparison]:
    """Each arm after the first against the first, paired by seed (seeds one side lacks are left out)."""
    check_budgets(arms)
    (base_label, base), *others = arms.items()
    by_seed = {f.seed: f.value for f in base}
    out = []
    for label, values in others:
        pairs = [(f.seed, by_seed[f.seed], f.value) for f in values if f.seed in by_seed]
        if len(pairs) < 2:
            raise ValueError(f"{label} and {base_label} share {len(pairs)} seed(s); a comparison needs 2")
        seeds, a, b = zip(*pairs)
        result = compare_paired([y - x for x, y in zip(a, b)], confidence=confidence)
        out.append(ArmComparison(base_label, label, seeds, a, b, result))
    return out


def _mean_sd(values: Sequence[float]) -> str:
    import statistics

    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def comparison_report(comparisons: Sequence[ArmComparison], metric: str) -> str:
    """Markdown: one row per arm against the baseline, then the per-seed values."""
    if not comparisons:
        return "(nothing to compare: give at least two arms)"
    conf = comparisons[0].result.confidence
    lines = [
        f"{metric} at the final evaluation; difference = arm − baseline, paired by seed; "
        f"{conf:.0%} percentile bootstrap interval over seeds; p: exact two-sided sign-flip test",
        "",
        f"| arm − baseline | seeds | baseline | arm | difference | {conf:.0%} interval | p | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        r = c.result
        lines.append(
            f"| {c.arm} − {c.baseline} | {r.n} | {_mean_sd(c.baseline_values)} | {_mean_sd(c.arm_values)} | "
            f"{r.mean:+.3f} | [{r.low:+.3f}, {r.high:+.3f}] | {r.p_value:.3g} | {_verdict(c)} ({r.reason}) |"
        )
    lines += ["", "per seed (" + metric + "):", ""]
    for c in comparisons:
        cells = ", ".join(
            f"seed {s}: {a:.3f} → {b:.3f}" for s, a, b in zip(c.seeds, c.baseline_values, c.arm_values)
        )
        lines.append(f"- {c.baseline} → {c.arm}: {cells}")
    return "\n".join(lines)


def _verdict(c: ArmComparison) -> str:
    verdict = c.result.verdict
    return verdict.replace("B", c.arm, 1).replace("A", c.baseline, 1) if verdict.startswith("B ") else verdict


# ----------------------------------------------------------------------------------------------- running


@dataclass(frozen=True)
class ComparePlan:
    """Arms × seeds, every run with ``overrides`` (the shared budget), ``workers`` processes at once."""

    arms: tuple[Arm, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    overrides: tuple[str, ...] = ()
    workers: int = 1


def _train_job(config: str, seed: int, overrides: Sequence[str], run_dir: str) -> str:
    """One training run in a worker process (one intra-op thread) -> its status."""
    import torch

    from opdkit.train.config import load_config
    from opdkit.train.loop import train

    torch.set_num_threads(1)
    return train(load_config(config, [*overrides, f"seed={seed}"]), run_dir, overwrite=True).status


def _finished(run_dir: Path, cfg: Any) -> bool:
    """Whether ``run_dir`` holds a finished run of exactly ``cfg`` (then it is read, not rerun)."""
    from opdkit.eval.plots import read_jsonl
    from opdkit.train.configio import to_dict

    path = run_dir / "config.yaml"
    if not path.is_file():
        return False
    same = yaml.safe_load(path.read_text(encoding="utf-8")) == yaml.safe_load(yaml.safe_dump(to_dict(cfg)))
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return same and max((r.get("step", 0) for r in rows), default=0) >= cfg.steps


def _warm_start_once(cfgs: Sequence[Any], log: Callable[[str], None]) -> None:
    """Warm-start (or find cached) the tiny models of every arm here, so the workers only read the cache."""
    import torch

    from opdkit.train.setup import warmstart_job
    from opdkit.warmstart import warm_start

    torch.set_num_threads(1)
    done = set()
    for cfg in cfgs:
        ws = warmstart_job(cfg)
        if cfg.model.student == "tiny" and (cfg.warmstart.cache_dir, ws.cache_key()) not in done:
            result = warm_start(ws, log=log)
            log(f"warm start {'cached' if result.cached else 'done'}: {result.path}")
            done.add((cfg.warmstart.cache_dir, ws.cache_key()))


def run_arms(plan: ComparePlan, out_dir: str | Path, log: Callable[[str], None] = print) -> None:
    """Train every (arm, seed) not already finished under ``out_dir`` (module docstring)."""
    from opdkit.train.config import load_config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs, cfgs = [], []
    for arm in plan.arms:
        for seed in plan.seeds:
            cfg = load_config(arm.config, [*plan.overrides, f"seed={seed}"])
            run_dir = out / f"{arm.label}-seed{seed}"
            if _finished(run_dir, cfg):
                log(f"{run_dir.name}: finished run found, read as it is")
                continue
            jobs.append((arm, seed, run_dir))
            cfgs.append(cfg)
    _warm_start_once(cfgs, log)
    with ProcessPoolExecutor(max(1, plan.workers), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_train_job, a.config, s, plan.overrides, str(d)) for a, s, d in jobs]
        for (_, _, run_dir), fut in zip(jobs, futures):
            log(f"{run_dir.name}: {fut.result()}")


def write_report(out_dir: str | Path, comparisons: Sequence[ArmComparison], metric: str) -> str:
    """The report (``comparison_report``), also written to ``<out>/compare.md`` and ``compare.json``."""
    from dataclasses import asdict

    report = comparison_report(comparisons, metric)
    out = Path(out_dir)
    (out / "compare.md").write_text(report + "\n", encoding="utf-8")
    (out / "compare.json").write_text(
        json.dumps([asdict(c) for c in comparisons], indent=2), encoding="utf-8"
    )
    return report
