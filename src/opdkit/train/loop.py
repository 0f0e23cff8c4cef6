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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from opdkit.eval import EvalSettings, evaluate, write_eval
from opdkit.eval.evaluate import VerifierCache
from opdkit.rollout import SamplingParams
from opdkit.rollout.budget import cache_token_budget
from opdkit.teachers.self_teacher import make_teacher_weights
from opdkit.train.batch import Prepared
from opdkit.train.checkpoint import CheckpointWriteError, remove_partial_checkpoints
from opdkit.train.config import TrainConfig
from opdkit.train.methods import METHODS, Method, MethodContext
from opdkit.train.precision import LossScaler, autocast, compute_dtype
from opdkit.train.preflight import preflight
from opdkit.train.rollouts import RolloutRequest, Rollouts, collect_rollouts
from opdkit.train.rundir import RunDir
from opdkit.train.setup import (
    Data,
    Models,
    load_data,
    load_models,
    make_external_teacher,
    make_optimizer,
    offline_pass_rates,
    resolve_device,
    seed_everything,
)
from opdkit.train.state import PromptSampler, TrainState, restore_from_checkpoint, write_checkpoint
from opdkit.train.student import choose_forward
from opdkit.train.update import (
    UpdateSettings,
    UpdateStats,
    mini_batch_rows,
    run_updates,
    step_without_signal,
)

Row = dict[str, float | str]  # one ``metrics.jsonl`` row: namespaced metric -> value (a skip reason is text)
# called as ``progress(step, row)`` after each logged step (the CLI's bar)
Progress = Callable[[int, Row], None]


@dataclass(frozen=True)
class TrainResult:
    """Where the run lives, the last step done, why it ended, and the last evaluation summary."""

    run_dir: Path
    last_step: int
    status: str
    final_eval: dict[str, Any] | None


@dataclass(frozen=True)
class _Run:
    """What ``train`` sets up once and every step reads: the config, the device, the run directory, models
    and data, the method with its context, the verifiers (cached per example), the updates' settings."""

    cfg: TrainConfig
    device: torch.device
    dir: RunDir
    models: Models
    data: Data
    method: Method
    ctx: MethodContext
    verifiers: VerifierCache
    update_settings: UpdateSettings


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Train ``cfg.method`` for ``cfg.steps`` steps, writing the run directory (see ``rundir``).

    ``progress``, if given, is called as ``progress(step, row)`` after each logged step (the CLI's bar).
    """
    run, state = _set_up(cfg, Path(run_dir), resume=resume, overwrite=overwrite)
    last_eval = _evaluate_at_start(run) if state.step == 0 else None
    for step in range(state.step + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        rollouts = _rollout(run, state, step)  # 1-3. questions -> G rollouts each -> verdicts, old log-probs
        t1 = time.perf_counter()
        prepared = _prepare(run, rollouts)  # 4. teacher scores and the method's weights / advantages
        t2 = time.perf_counter()
        stats = _update(run, state, rollouts, prepared)  # 5. loss, optimizer step(s), EMA teacher update
        t3 = time.perf_counter()
        failed_rows = prepared.metrics.get("teacher/failed_rows", 0.0)
        state.end_step(step, stats.bad_streak, teacher_failed=failed_rows > 0)
        _log(run, _row(state, rollouts, prepared, stats, (t0, t1, t2, t3)), prepared, progress)
        # 6. checkpoint, evaluate; a run stops on refused updates (weights still the last good ones) or on a
        # teacher that keeps failing, after saving
        refused = _refused_too_often(cfg, state, stats)
        teacher_down = _teacher_down(run, state)
        if _due(step, cfg.checkpoint_every, cfg.steps) or refused or teacher_down:
            failed = _checkpoint(run, state)
            if failed:
                return TrainResult(run.dir.path, step, failed, last_eval)
        if refused:
            return TrainResult(run.dir.path, step, refused, last_eval)
        # evaluation after the step's row and checkpoint, so a crash in it loses no training
        if _due(step, cfg.eval.every, cfg.steps) and run.data.eval:
            last_eval = _evaluate(run, step)
            run.dir.add_to_step(step, _eval_row(last_eval))
        if teacher_down:
            return TrainResult(run.dir.path, step, teacher_down, last_eval)
    return TrainResult(run.dir.path, cfg.steps, "completed", last_eval)


def _set_up(cfg: TrainConfig, run_dir: Path, *, resume: bool, overwrite: bool) -> tuple[_Run, TrainState]:
    """Check the config, open the run directory, load models and data, build the method's context and the
    training state (restored from the newest checkpoint on ``resume``), then the method's own set-up."""
    if torch.device(resolve_device(cfg.model.device)).type == "cpu":
        torch.set_num_threads(cfg.threads)
    _quiet_transformers()
    seed_everything(cfg.seed)
    preflight(cfg)  # data, verifiers, models, teacher: checked before the run directory exists
    if resume:  # a killed save's folder must not keep a full disk full while the resume writes config.yaml
        remove_partial_checkpoints(run_dir)
    directory = RunDir.open(run_dir, cfg, resume=resume, overwrite=overwrite)
    device = resolve_device(cfg.model.device)
    models = load_models(cfg, device)
    data = load_data(cfg, models.tokenizer, dict(cfg.model.chat_template_kwargs or {}))
    method = METHODS.get(cfg.method.name)
    ctx = _method_context(cfg, models, data, method, device)
    scaler = LossScaler(cfg.model.dtype, device)  # float16 only; float32 master weights always
    state = TrainState(
        make_optimizer(cfg, models.student), scaler, PromptSampler(len(data.train), cfg.seed), ctx
    )
    run = _Run(
        cfg, device, directory, models, data, method, ctx, VerifierCache(), _update_settings(cfg, scaler)
    )
    if resume:
        restore_from_checkpoint(run.dir, state)
    with autocast(cfg.model.dtype, device):
        method.setup(cfg.method, ctx)
    return run, state


def _method_context(
    cfg: TrainConfig, models: Models, data: Data, method: Method, device: torch.device
) -> MethodContext:
    """The models, teachers and run-level settings the method's ``prepare`` and ``loss`` read."""
    logprob_t = cfg.rollout.logprob_temperature or cfg.rollout.temperature
    return MethodContext(
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
        chat_kwargs=dict(cfg.model.chat_template_kwargs or {}),
        estimate_pass_rates=lambda n, t: _pass_rates(cfg, models, data, n, t),
    )


def _update_settings(cfg: TrainConfig, scaler: LossScaler) -> UpdateSettings:
    o = cfg.optim
    return UpdateSettings(
        o.mini_batches, o.micro_batch_size, o.grad_clip, dtype=cfg.model.dtype, scaler=scaler,
        micro_batch_tokens=o.micro_batch_tokens, max_update_ratio=o.max_update_ratio,
        max_bad_updates=o.max_bad_updates,
    )  # fmt: skip


def _rollout(run: _Run, state: TrainState, step: int) -> Rollouts:
    """Steps 1-3: the step's questions, G rollouts each with the current student, their verdicts and (when
    an update needs them) their old log-probs."""
    cfg = run.cfg
    request = RolloutRequest(
        example_indices=state.sampler.next(cfg.rollout.prompts_per_step),
        params=_params(cfg, cache_tokens=_cache_budget(cfg, run.models.student)),
        seed=cfg.seed * 1_000_003 + step,
        first_group_id=step * cfg.rollout.prompts_per_step,
        logprob_temperature=run.ctx.temperature,
        micro_batch_size=cfg.optim.micro_batch_size,
        forward=run.ctx.forward,
        micro_batch_tokens=cfg.optim.micro_batch_tokens,
        # one update per step: the loss's current log-probs are the old ones (§2.2), no extra forward
        old_logprobs=cfg.optim.mini_batches > 1 or run.method.needs_old_logp(cfg.method),
    )
    with autocast(cfg.model.dtype, run.device):  # compute dtype; the weights stay float32
        return collect_rollouts(run.models.student, run.models.tokenizer, run.data, run.verifiers, request)


def _prepare(run: _Run, rollouts: Rollouts) -> Prepared:
    """Step 4 (no grad): teacher scores and the method's weights / advantages."""
    with autocast(run.cfg.model.dtype, run.device):
        return run.method.prepare(run.cfg.method, rollouts.batch, run.ctx)


def _update(run: _Run, state: TrainState, rollouts: Rollouts, prepared: Prepared) -> UpdateStats:
    """Step 5: the optimizer update(s); a step without signal makes none, or zero-gradient ones with
    ``optim.step_on_empty`` (the reference trainers' behaviour, ``update.step_without_signal``)."""
    cfg = run.cfg
    if prepared.skip_reason is None:
        return run_updates(run.method, cfg.method, rollouts.batch, prepared, run.ctx, state.optim,
                           run.update_settings, state.bad_updates)  # fmt: skip
    if cfg.optim.step_on_empty:
        updates = len(mini_batch_rows(rollouts.batch, cfg.optim.mini_batches))
        return step_without_signal(run.ctx.student, run.ctx.self_teacher, state.optim, updates)
    return UpdateStats(bad_streak=state.bad_updates)


def _row(
    state: TrainState, rollouts: Rollouts, prepared: Prepared, stats: UpdateStats, marks: tuple[float, ...]
) -> Row:
    """The step's ``metrics.jsonl`` row; ``marks``: the clock at the start of the step and after the
    rollouts, the preparation and the update."""
    t0, t1, t2, t3 = marks
    return {
        "step": state.step,
        **rollouts.metrics,
        **prepared.metrics,
        **stats.as_metrics(),
        "train/skipped": float(stats.updates == 0),
        "train/no_signal": float(prepared.skip_reason is not None),
        **({"train/skip_reason": prepared.skip_reason} if prepared.skip_reason else {}),
        "train/lr": state.optim.scheduler.get_last_lr()[0],
        "teacher/consecutive_failed_steps": float(state.teacher_failures),
        "time/rollout_s": t1 - t0, "time/prepare_s": t2 - t1, "time/update_s": t3 - t2,
        "time/step_s": time.perf_counter() - t0,
    }  # fmt: skip


def _log(run: _Run, row: Row, prepared: Prepared, progress: Progress | None) -> None:
    """Step 6: write the row (every ``log_every`` steps and the last), the method's diagnostics, the bar."""
    step = int(row["step"])
    if step % max(1, run.cfg.log_every) == 0 or step == run.cfg.steps:
        run.dir.log(row)
        if prepared.diagnostics:  # per-question / per-row values for the method's plots
            run.dir.log_diagnostics(step, prepared.diagnostics)
        if progress is not None:
            progress(step, row)


def _refused_too_often(cfg: TrainConfig, state: TrainState, stats: UpdateStats) -> str | None:
    """Why the run stops because ``optim.max_bad_updates`` updates in a row were refused, else None."""
    if 0 < cfg.optim.max_bad_updates <= state.bad_updates:
        return f"stopped: {state.bad_updates} consecutive updates refused (last: {stats.refusal})"
    return None


def _teacher_down(run: _Run, state: TrainState) -> str | None:
    """Why the run stops because the teacher failed on ``teacher.max_failed_steps`` steps in a row."""
    if run.method.uses_teacher and state.teacher_failures >= run.cfg.teacher.max_failed_steps:
        return f"stopped: teacher failed on {state.teacher_failures} consecutive steps"
    return None


def _checkpoint(run: _Run, state: TrainState) -> str | None:
    """Save ``checkpoints/step_N``; the reason the run stops if it cannot be written, else None."""
    try:
        write_checkpoint(run.dir, run.models.tokenizer, state, run.cfg.keep_checkpoints)
    except CheckpointWriteError as exc:  # e.g. a full disk; the partial folder is already removed
        return f"stopped: {exc}"
    return None


def _evaluate_at_start(run: _Run) -> dict[str, Any] | None:
    """The evaluation before the first step (``eval.at_start``), logged as step 0."""
    if not (run.cfg.eval.at_start and run.data.eval):
        return None
    summary = _evaluate(run, 0)
    run.dir.log({"step": 0, **_eval_row(summary)})
    return summary


def _quiet_transformers() -> None:
    """No per-load progress bars in the middle of the run's own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _pass_rates(cfg: TrainConfig, models: Models, data: Data, n: int, temperature: float) -> torch.Tensor:
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


def _evaluate(run: _Run, step: int) -> dict[str, Any]:
    """Evaluate the student on the held-out set; the per-sample records go to ``eval/step_<step>.jsonl``."""
    cfg, models, e = run.cfg, run.models, run.cfg.eval
    settings = EvalSettings(
        k=e.k, temperature=e.temperature, top_p=e.top_p,
        max_new_tokens=e.max_new_tokens or cfg.rollout.max_new_tokens, seed=cfg.seed + 17,
        prompts_per_batch=e.batch_size, max_cache_tokens=_cache_budget(cfg, models.student),
    )  # fmt: skip
    with autocast(cfg.model.dtype, next(models.student.parameters()).device):
        result = evaluate(
            models.student, models.tokenizer, run.data.eval, settings,
            chat_kwargs=dict(cfg.model.chat_template_kwargs or {}),
        )  # fmt: skip
    write_eval(result, run.dir.eval_dir, f"step_{step}")
    return result.summary


def _eval_row(summary: dict[str, Any]) -> dict[str, float]:
    return {f"eval/{k}": v for k, v in summary["average"].items() if k != "num_problems"}
