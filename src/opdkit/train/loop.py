"""The training loop: one explicit, synchronous loop for every method.

Each step (docs/architecture.md "The training loop"):

1. draw Q questions (each gets a fresh group id);
2. roll out G responses per question with the current student;
3. verify them (reward, extracted answer, feedback) and recompute the old log-probs (skipped when the step
   makes one update and the method needs them only in its loss, where they equal the current ones);
4. ``method.prepare``: teacher scoring (external teacher, or the self-teacher's reprompted context) and the
   method's weights / advantages;
5. ``run_updates``: loss, optimizer step(s), EMA self-teacher update — skipped when the method says the step
   carries no signal (e.g. SC-SDPO with no informative question; ``optim.step_on_empty`` steps on a zero
   gradient instead, as the reference trainers do) or the loss/gradient is not finite;
6. log one row to ``metrics.jsonl``; checkpoint, then evaluate (added to the step's row) at fixed steps.

Usage::

    from opdkit.train import load_config, train
    result = train(load_config("tiny/sc_sdpo", ["steps=20"]), "runs/sc_sdpo")
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from opdkit.eval import EvalSettings, evaluate, write_eval
from opdkit.eval.evaluate import VerifierCache
from opdkit.rollout import SamplingParams
from opdkit.rollout.budget import cache_token_budget
from opdkit.teachers.self_teacher import make_teacher_weights
from opdkit.train.checkpoint import (
    CheckpointParts,
    CheckpointWriteError,
    load_latest_checkpoint,
    remove_partial_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from opdkit.train.config import TrainConfig
from opdkit.train.methods import METHODS, MethodContext
from opdkit.train.precision import LossScaler, autocast, compute_dtype
from opdkit.train.preflight import preflight
from opdkit.train.rollouts import RolloutRequest, collect_rollouts
from opdkit.train.rundir import RunDir
from opdkit.train.setup import (
    PromptSampler,
    load_data,
    load_models,
    make_external_teacher,
    make_optimizer,
    offline_pass_rates,
    resolve_device,
    seed_everything,
)
from opdkit.train.student import choose_forward
from opdkit.train.update import (
    UpdateSettings,
    UpdateStats,
    mini_batch_rows,
    run_updates,
    step_without_signal,
)


@dataclass(frozen=True)
class TrainResult:
    """Where the run lives, the last step done, why it ended, and the last evaluation summary."""

    run_dir: Path
    last_step: int
    status: str
    final_eval: dict[str, Any] | None


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: Any = None,
) -> TrainResult:
    """Train ``cfg.method`` for ``cfg.steps`` steps, writing the run directory (see ``rundir``).

    ``progress``, if given, is called as ``progress(step, row)`` after each logged step (the CLI's bar).
    """
    if torch.device(resolve_device(cfg.model.device)).type == "cpu":
        torch.set_num_threads(cfg.threads)
    _quiet_transformers()
    seed_everything(cfg.seed)
    preflight(cfg)  # data, verifiers, models, teacher: checked before the run directory exists
    if resume:  # a killed save's folder must not keep a full disk full while the resume writes config.yaml
        remove_partial_checkpoints(Path(run_dir))
    run = RunDir.open(run_dir, cfg, resume=resume, overwrite=overwrite)
    device = resolve_device(cfg.model.device)
    models = load_models(cfg, device)
    chat_kwargs = dict(cfg.model.chat_template_kwargs or {})
    data = load_data(cfg, models.tokenizer, chat_kwargs)
    logprob_t = cfg.rollout.logprob_temperature or cfg.rollout.temperature
    method = METHODS.get(cfg.method.name)
    ctx = MethodContext(
        student=models.student,
        tokenizer=models.tokenizer,
        temperature=logprob_t,
        forward=choose_forward(
            models.student, cfg.model.hidden_state_losses and method.hidden_state_loss(cfg.method)
        ),
        teacher=make_external_teacher(cfg, models, device, logprob_t) if method.uses_teacher else None,
        self_teacher=make_teacher_weights(models.student, cfg.self_teacher)
        if method.uses_self_teacher
        else None,
        self_teacher_options=cfg.self_teacher,
        chat_kwargs=chat_kwargs,
        estimate_pass_rates=lambda n, t: _pass_rates(cfg, models, data, n, t),
    )
    optimizer, scheduler = make_optimizer(cfg, models.student)
    scaler = LossScaler(cfg.model.dtype, device)  # float16 only; float32 master weights always
    sampler = PromptSampler(len(data.train), cfg.seed)
    verifiers = VerifierCache()
    start, teacher_failures, bad_streak = 0, 0, 0
    if resume:
        start, teacher_failures, bad_streak = _restore(
            run, models.student, (optimizer, scheduler, scaler), sampler, ctx
        )
    with autocast(cfg.model.dtype, device):
        method.setup(cfg.method, ctx)
    last_eval = (
        _evaluate(cfg, run, models, data, 0) if start == 0 and cfg.eval.at_start and data.eval else None
    )
    if last_eval is not None:
        run.log({"step": 0, **_eval_row(last_eval)})

    status = "completed"
    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        # 1-3. questions -> G rollouts each -> verdicts and old log-probs
        request = RolloutRequest(
            example_indices=sampler.next(cfg.rollout.prompts_per_step),
            params=_params(cfg, cache_tokens=_cache_budget(cfg, models.student)),
            seed=cfg.seed * 1_000_003 + step,
            first_group_id=step * cfg.rollout.prompts_per_step,
            logprob_temperature=logprob_t,
            micro_batch_size=cfg.optim.micro_batch_size,
            forward=ctx.forward,
            micro_batch_tokens=cfg.optim.micro_batch_tokens,
            # one update per step: the loss's current log-probs are the old ones (§2.2), no extra forward
            old_logprobs=cfg.optim.mini_batches > 1 or method.needs_old_logp(cfg.method),
        )
        with autocast(cfg.model.dtype, device):  # compute dtype; the weights stay float32
            rollouts = collect_rollouts(models.student, models.tokenizer, data, verifiers, request)
        t1 = time.perf_counter()
        # 4. teacher scores and the method's weights / advantages (no grad)
        with autocast(cfg.model.dtype, device):
            prepared = method.prepare(cfg.method, rollouts.batch, ctx)
        t2 = time.perf_counter()
        # 5. loss, optimizer step(s), EMA teacher update
        stats = UpdateStats(bad_streak=bad_streak)
        if prepared.skip_reason is None:
            o = cfg.optim
            settings = UpdateSettings(
                o.mini_batches, o.micro_batch_size, o.grad_clip, dtype=cfg.model.dtype, scaler=scaler,
                micro_batch_tokens=o.micro_batch_tokens, max_update_ratio=o.max_update_ratio,
                max_bad_updates=o.max_bad_updates,
            )  # fmt: skip
            stats = run_updates(method, cfg.method, rollouts.batch, prepared, ctx, (optimizer, scheduler),
                                settings, bad_streak)  # fmt: skip
        elif cfg.optim.step_on_empty:  # the reference's zero-gradient steps (update.step_without_signal)
            updates = len(mini_batch_rows(rollouts.batch, cfg.optim.mini_batches))
            stats = step_without_signal(ctx.student, ctx.self_teacher, (optimizer, scheduler), updates)
        bad_streak = stats.bad_streak
        t3 = time.perf_counter()
        failed_rows = prepared.metrics.get("teacher/failed_rows", 0.0)
        teacher_failures = teacher_failures + 1 if failed_rows > 0 else 0
        # 6. log, evaluate, checkpoint
        row = {
            "step": step,
            **rollouts.metrics,
            **prepared.metrics,
            **stats.as_metrics(),
            "train/skipped": float(stats.updates == 0),
            "train/no_signal": float(prepared.skip_reason is not None),
            **({"train/skip_reason": prepared.skip_reason} if prepared.skip_reason else {}),
            "train/lr": scheduler.get_last_lr()[0],
            "teacher/consecutive_failed_steps": float(teacher_failures),
        }
        row.update({"time/rollout_s": t1 - t0, "time/prepare_s": t2 - t1, "time/update_s": t3 - t2,
                    "time/step_s": time.perf_counter() - t0})  # fmt: skip
        if step % max(1, cfg.log_every) == 0 or step == cfg.steps:
            run.log(row)
            if prepared.diagnostics:  # per-question / per-row values for the method's plots
                run.log_diagnostics(step, prepared.diagnostics)
            if progress is not None:
                progress(step, row)
        stop = method.uses_teacher and teacher_failures >= cfg.teacher.max_failed_steps
        bad_weights = 0 < cfg.optim.max_bad_updates <= bad_streak  # the weights are still the last good ones
        if _due(step, cfg.checkpoint_every, cfg.steps) or stop or bad_weights:
            try:
                _save(run, step, models, (optimizer, scheduler, scaler), sampler, ctx,
                      (teacher_failures, bad_streak), cfg.keep_checkpoints)  # fmt: skip
            except CheckpointWriteError as exc:  # e.g. a full disk; the partial folder is already removed
                return TrainResult(run.path, step, f"stopped: {exc}", last_eval)
        if bad_weights:
            status = f"stopped: {bad_streak} consecutive updates refused (last: {stats.refusal})"
            return TrainResult(run.path, step, status, last_eval)
        # evaluation after the step's row and checkpoint, so a crash in it loses no training
        if _due(step, cfg.eval.every, cfg.steps) and data.eval:
            last_eval = _evaluate(cfg, run, models, data, step)
            run.add_to_step(step, _eval_row(last_eval))
        if stop:
            status = f"stopped: teacher failed on {teacher_failures} consecutive steps"
            return TrainResult(run.path, step, status, last_eval)
    return TrainResult(run.path, cfg.steps, status, last_eval)


def _quiet_transformers() -> None:
    """No per-load progress bars in the middle of the run's own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _pass_rates(cfg: TrainConfig, models: Any, data: Any, n: int, temperature: float) -> torch.Tensor:
    params = _params(cfg, n=n, temperature=temperature, cache_tokens=_cache_budget(cfg, models.student))
    return offline_pass_rates(models.student, models.tokenizer, data, params, seed=cfg.seed + 7)


def _cache_budget(cfg: TrainConfig, student: torch.nn.Module) -> int:
    """rollout.kv_cache_tokens, or half the free device memory in cache tokens (read at each call)."""
    return cache_token_budget(student, cfg.rollout.kv_cache_tokens, compute_dtype(cfg.model.dtype))


def _params(
    cfg: TrainConfig, *, n: int | None = None, temperature: float | None = None, cache_tokens: int = 0
) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(
        n=n or r.n,
        temperature=r.temperature if temperature is None else temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        max_new_tokens=r.max_new_tokens,
        logprobs=False,  # the loop recomputes log-probs with the trainer's forward (§0), never the sampler's
        max_cache_tokens=cache_tokens,
    )


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def _evaluate(cfg: TrainConfig, run: RunDir, models: Any, data: Any, step: int) -> dict[str, Any]:
    e = cfg.eval
    settings = EvalSettings(
        k=e.k, temperature=e.temperature, top_p=e.top_p,
        max_new_tokens=e.max_new_tokens or cfg.rollout.max_new_tokens, seed=cfg.seed + 17,
        prompts_per_batch=e.batch_size, max_cache_tokens=_cache_budget(cfg, models.student),
    )  # fmt: skip
    with autocast(cfg.model.dtype, next(models.student.parameters()).device):
        result = evaluate(
            models.student, models.tokenizer, data.eval, settings,
            chat_kwargs=dict(cfg.model.chat_template_kwargs or {}),
        )  # fmt: skip
    write_eval(result, run.eval_dir, f"step_{step}")
    return result.summary


def _eval_row(summary: dict[str, Any]) -> dict[str, float]:
    return {f"eval/{k}": v for k, v in summary["average"].items() if k != "num_problems"}


def _save(run, step, models, optim, sampler, ctx, counters, keep) -> None:
    optimizer, scheduler, scaler = optim
    teacher_failures, bad_streak = counters
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "sampler": sampler.state_dict(),
        "rng": rng_state(),
        "teacher_failures": teacher_failures,
        "bad_updates": bad_streak,
        "paced_weights_D": ctx.paced_weights_D,
        "loss_scaler": scaler.state_dict(),
    }
    teacher_state = ctx.self_teacher.state_dict() if ctx.self_teacher is not None else {}
    run.sync()  # the metrics of every step up to this checkpoint survive a machine crash with it
    save_checkpoint(
        run.path, step, CheckpointParts(models.student, models.tokenizer, teacher_state, state), keep=keep
    )


def _restore(run: RunDir, student, optim, sampler: PromptSampler, ctx: MethodContext) -> tuple[int, int, int]:
    """Load the newest complete checkpoint into the live objects -> (step, consecutive teacher failures,
    consecutive refused updates)."""
    ckpt = load_latest_checkpoint(run.path, next(student.parameters()).dtype)
    if ckpt is None:
        print(f"no complete checkpoint in {run.path}; starting from step 0")
        run.truncate_metrics(-1)
        return 0, 0, 0
    student.load_state_dict(ckpt.model_state)  # strict: any mismatch is an error, not a silent skip
    state = ckpt.state
    optim[0].load_state_dict(state["optimizer"])
    optim[1].load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    optim[2].load_state_dict(state.get("loss_scaler", {}))
    if ctx.self_teacher is not None:
        ctx.self_teacher.load_state_dict(ckpt.teacher_state)
    ctx.paced_weights_D = state.get("paced_weights_D")
    set_rng_state(state["rng"])
    run.truncate_metrics(state["step"])
    print(f"resumed from {ckpt.path} (step {state['step']})")
    return int(state["step"]), int(state["teacher_failures"]), int(state.get("bad_updates", 0))
