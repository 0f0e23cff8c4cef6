"""Everything the loop needs before its first step: device, models, data, teachers, optimizer.

Kept out of ``loop.py`` so that the loop itself reads top to bottom.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from opdkit.data import Example
from opdkit.data.benchmarks import training_spec
from opdkit.eval import TaskSource, resolve_examples
from opdkit.eval.datasets import task_examples_from_problems
from opdkit.rewards import make_verifier, verify_batch
from opdkit.rollout import SamplingParams, encode_chats, sample
from opdkit.teachers.base import TEACHERS, Teacher
from opdkit.train.config import TeacherConfig, TrainConfig
from opdkit.train.state import Optim


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Models:
    """The student and its tokenizer, and the path of a warm-started teacher when there is one."""

    student: torch.nn.Module
    tokenizer: Any
    student_path: str
    teacher_path: str | None
    dtype: str = "float32"  # the run's compute dtype (model.dtype); the student's weights are float32


def load_models(cfg: TrainConfig, device: torch.device) -> Models:
    """Load the student (``model.student``) in float32, warm-starting the tiny pair first if it is 'tiny'."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student_path, teacher_path = cfg.model.student, None
    if student_path == "tiny":
        from opdkit.warmstart import warm_start

        pair = warm_start(warmstart_job(cfg), log=print)
        student_path, teacher_path = str(pair.student_path), str(pair.teacher_path)
    # float32 master weights whatever model.dtype is: it is the compute dtype of autocast (train.precision)
    model = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32).to(device)
    tokenizer = AutoTokenizer.from_pretrained(student_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.model.activation_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x name
        (enable or model.gradient_checkpointing_enable)()  # no prompt sharing then (prefix_sharing_ok)
    model.train()
    return Models(model, tokenizer, student_path, teacher_path, cfg.model.dtype)


def warmstart_job(cfg: TrainConfig) -> Any:
    """The warm start of ``model.student: tiny``: ``cfg.warmstart`` on the run's task and training pool size,
    with its self-teacher's reprompt template."""
    from opdkit.warmstart import WarmStartJob

    task = cfg.data.task
    return WarmStartJob(task.spec(), cfg.self_teacher.template(), task.train_size, cfg.warmstart)


def task_source(cfg: TrainConfig) -> TaskSource:
    t = cfg.data.task
    return TaskSource(t.name, t.style, t.difficulty, t.train_size, t.eval_size, seed=cfg.seed,
                      instruction=t.instruction)  # fmt: skip


def _task_split(cfg: TrainConfig, split: str) -> list[Example]:
    """The synthetic task's split; for a warm-started tiny student, the warm start's own disjoint pools
    (its training pool to train on, its report set to evaluate on), so no evaluation question was seen."""
    if cfg.model.student != "tiny":
        return resolve_examples("task", split, task_source(cfg))
    from opdkit.warmstart import warm_start_problems

    problems = warm_start_problems(warmstart_job(cfg))
    chosen = problems.train if split == "train" else problems.report
    return task_examples_from_problems(cfg.data.task.spec(), chosen, split)


def with_verifier_options(
    examples: list[Example], options: Mapping[str, Mapping[str, Any]] | None
) -> list[Example]:
    """``examples`` with ``data.verifier_options[row.verifier]`` under each row's own options (the row wins).

    Every given verifier is built once here, so an unknown verifier or option fails before training starts.
    """
    if not options:
        return examples
    for name, opts in options.items():
        try:
            make_verifier(name, **dict(opts))
        except (TypeError, KeyError) as exc:
            raise ValueError(f"data.verifier_options.{name}: {exc}") from None
    out = []
    for ex in examples:
        given = options.get(ex.verifier)
        extra = {**ex.extra, "verifier_options": {**dict(given), **ex.verifier_options}} if given else None
        out.append(ex if extra is None else dataclasses.replace(ex, extra=extra))
    return out


@dataclass(frozen=True)
class Data:
    train: list[Example]
    eval: list[Example]
    train_prompt_ids: list[list[int]]


def load_data(cfg: TrainConfig, tokenizer: Any, chat_kwargs: dict) -> Data:
    """Training and held-out examples; prompts are tokenized once and checked against the length limit."""

    def examples(spec: str, split: str) -> list[Example]:
        return _task_split(cfg, split) if spec == "task" else resolve_examples(spec, split, task_source(cfg))

    # a bare benchmark name: its train split
    train = with_verifier_options(examples(training_spec(cfg.data.train), "train"), cfg.data.verifier_options)
    held_out = examples(cfg.data.eval, "eval") if cfg.data.eval else []
    held_out = with_verifier_options(held_out, cfg.data.verifier_options)
    if cfg.eval.num_problems:
        held_out = held_out[: cfg.eval.num_problems]
    prompt_ids = encode_chats(tokenizer, [ex.prompt for ex in train], **chat_kwargs)
    for ex, ids in zip(train, prompt_ids):
        if len(ids) > cfg.data.max_prompt_tokens:
            raise ValueError(
                f"training example {ex.problem_id}: prompt has {len(ids)} tokens, over "
                f"data.max_prompt_tokens={cfg.data.max_prompt_tokens}"
            )
    return Data(train=train, eval=held_out, train_prompt_ids=prompt_ids)


def _local_options(
    t: TeacherConfig, models: Models, device: torch.device, temperature: float
) -> dict[str, Any]:
    path = t.path
    if path in ("", "tiny"):
        if models.teacher_path is None:
            raise ValueError(
                "teacher.kind=local needs teacher.path (or model.student=tiny for the tiny teacher)"
            )
        path = models.teacher_path
    # a frozen teacher needs no master copy: it is loaded in the run's compute dtype
    return {"path": path, "device": str(device), "temperature": temperature, "dtype": models.dtype}


def server_api_key(t: TeacherConfig) -> str | None:
    """The teacher server's key: ``teacher.api_key``, else the variable ``teacher.api_key_env``, else none."""
    return t.api_key or (os.environ.get(t.api_key_env) if t.api_key_env else None) or None


def _server_options(
    t: TeacherConfig, models: Models, device: torch.device, temperature: float
) -> dict[str, Any]:
    if not t.url:
        raise ValueError("teacher.kind=server needs teacher.url")
    return {
        "url": t.url, "model": t.model or None, "api_key": server_api_key(t), "timeout_s": t.timeout_s,
        "max_retries": t.max_retries, "max_concurrency": t.concurrency,
        "rows_per_request": t.rows_per_request,
        "temperature": temperature,
    }  # fmt: skip


def _unreliable_options(
    t: TeacherConfig, models: Models, device: torch.device, temperature: float
) -> dict[str, Any]:
    return {**_local_options(t, models, device, temperature), "wrong_fraction": t.wrong_fraction}


# teacher.kind -> the factory's keyword options, from the ``teacher`` config section
_TEACHER_OPTIONS = {"local": _local_options, "server": _server_options, "unreliable": _unreliable_options}


def make_external_teacher(
    cfg: TrainConfig, models: Models, device: torch.device, temperature: float
) -> Teacher:
    """The ``teacher.kind`` teacher; its tokenizer must equal the student's (ids are sent as they are)."""
    if cfg.teacher.kind == "none":
        raise ValueError(
            f"method {cfg.method.name} needs an external teacher: set teacher.kind=local or server"
        )
    import opdkit.teachers.local
    import opdkit.teachers.server
    import opdkit.teachers.unreliable  # noqa: F401  (register the kinds)

    t = cfg.teacher
    temperature = temperature if t.temperature is None else t.temperature
    teacher = TEACHERS.get(t.kind)(**_TEACHER_OPTIONS[t.kind](t, models, device, temperature))
    try:
        teacher.check_tokenizer(models.tokenizer)
    except ConnectionError as exc:  # a server down at start: one error line for the CLI, not a traceback
        raise ValueError(f"the teacher is not reachable: {exc}; start it or fix teacher.url") from None
    return teacher


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> Optim:
    """AdamW and a linear-warm-up-then-constant schedule (§10).

    The fused AdamW kernel (one kernel for all parameters; the same update) on CPU and CUDA, where torch has
    it for floating-point parameters; the per-tensor loop elsewhere.
    """
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None
    optimizer = torch.optim.AdamW(
        params,
        lr=o.lr,
        betas=tuple(o.betas),
        weight_decay=o.weight_decay,
        fused=fused,
    )
    warmup = max(0, o.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / warmup) if warmup else 1.0
    )
    return Optim(optimizer, scheduler)


def offline_pass_rates(
    student: torch.nn.Module, tokenizer: Any, data: Data, params: SamplingParams, seed: int
) -> torch.Tensor:
    """Pass rate of the current student on every training question (PACED's p0, §7.3) -> (D,) float32."""
    from opdkit.eval.evaluate import VerifierCache

    verifiers, rates, chunk = VerifierCache(), [], 32
    for start in range(0, len(data.train), chunk):
        exs = data.train[start : start + chunk]
        rollout = sample(
            student, tokenizer, data.train_prompt_ids[start : start + chunk], params, seed=seed + start
        )
        for p, ex in enumerate(exs):
            rows = range(p * params.n, (p + 1) * params.n)
            verdicts = verify_batch(
                verifiers.get(ex), [rollout.texts[i] for i in rows], [ex.ground_truth] * params.n,
                [bool(rollout.truncated_N[i]) for i in rows],
            )  # fmt: skip
            rates.append(sum(v.correct for v in verdicts) / params.n)
    return torch.tensor(rates, dtype=torch.float32)
