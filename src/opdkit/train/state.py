"""What a run carries from step to step besides the weights, and how a checkpoint saves and restores it.

``TrainState`` holds the optimizer and its schedule (``Optim``), float16's loss scaler, the prompt sampler's
position, the counters that stop a run (teacher failures and refused updates in a row) and the last step
done. The self-teacher's weights and PACED's frozen question weights are the method's own state: they live
on the method's context (``MethodContext``), which the method reads and updates, and ``TrainState`` saves and
restores them there.

``state_dict()`` is the content of a checkpoint's ``state.pt`` (plain tensors and Python values, read back
with ``torch.load(weights_only=True)``) and includes the process's RNG states; the self-teacher's weights go
to their own file (``teacher_state_dict()``, ``teacher.safetensors``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from opdkit.train.checkpoint import (
    CheckpointParts,
    load_latest_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from opdkit.train.methods.base import MethodContext
from opdkit.train.precision import LossScaler
from opdkit.train.rundir import RunDir


@dataclass(frozen=True)
class Optim:
    """The optimizer and its learning-rate schedule; the schedule steps once after each applied update."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


class PromptSampler:
    """Draws questions without replacement, reshuffling (seeded) at each epoch; its state is two ints."""

    def __init__(self, size: int, seed: int) -> None:
        if size == 0:
            raise ValueError("the training set is empty")
        self.size, self.seed = size, seed
        self.epoch, self.pos = 0, 0

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def next(self, count: int) -> list[int]:
        out: list[int] = []
        order = self._order()
        while len(out) < count:
            if self.pos == self.size:
                self.epoch, self.pos = self.epoch + 1, 0
                order = self._order()
            out.append(order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


@dataclass
class TrainState:
    """The run's state besides the student's weights: what a checkpoint saves and a resume restores.

    step: the last step done (0 before the first). teacher_failures: steps in a row on which some teacher
    scores never arrived. bad_updates: optimizer updates refused in a row (non-finite or exploding), across
    steps. ``ctx`` holds the self-teacher (or None) and PACED's weights ``paced_weights_D`` (or None).
    """

    optim: Optim
    scaler: LossScaler
    sampler: PromptSampler
    ctx: MethodContext
    step: int = 0
    teacher_failures: int = 0
    bad_updates: int = 0

    def end_step(self, step: int, bad_updates: int, *, teacher_failed: bool) -> None:
        """Record that ``step`` is done, with the refused-update streak at its end and whether some of its
        teacher scores were missing (the failure streak grows, or restarts at 0)."""
        self.step = step
        self.bad_updates = bad_updates
        self.teacher_failures = self.teacher_failures + 1 if teacher_failed else 0

    def state_dict(self) -> dict[str, Any]:
        """``state.pt``'s content: optimizer, schedule, sampler, RNG states, counters, PACED's weights."""
        return {
            "step": self.step,
            "optimizer": self.optim.optimizer.state_dict(),
            "scheduler": self.optim.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "teacher_failures": self.teacher_failures,
            "bad_updates": self.bad_updates,
            "paced_weights_D": self.ctx.paced_weights_D,
            "loss_scaler": self.scaler.state_dict(),
        }

    def teacher_state_dict(self) -> dict[str, torch.Tensor]:
        """The self-teacher's own weights ({} without a self-teacher)."""
        return self.ctx.self_teacher.state_dict() if self.ctx.self_teacher is not None else {}

    def load_state_dict(self, state: dict[str, Any], teacher_state: dict[str, torch.Tensor]) -> None:
        """Put a saved ``state_dict()`` (and the self-teacher's saved weights) back into the live objects.

        Keys added after the first checkpoints (``bad_updates``, ``loss_scaler``, ``paced_weights_D``) may be
        missing from an older checkpoint: they take their start values.
        """
        self.optim.optimizer.load_state_dict(state["optimizer"])
        self.optim.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.scaler.load_state_dict(state.get("loss_scaler", {}))
        if self.ctx.self_teacher is not None:
            self.ctx.self_teacher.load_state_dict(teacher_state)
        self.ctx.paced_weights_D = state.get("paced_weights_D")
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.teacher_failures = int(state["teacher_failures"])
        self.bad_updates = int(state.get("bad_updates", 0))


def write_checkpoint(run: RunDir, tokenizer: Any, state: TrainState, keep: int) -> None:
    """Save the student (``state.ctx.student``), its tokenizer and ``state`` as ``checkpoints/step_N``.

    Raises ``checkpoint.CheckpointWriteError`` (the partial folder already removed) when a file cannot be
    written.
    """
    run.sync()  # the metrics of every step up to this checkpoint survive a machine crash with it
    parts = CheckpointParts(state.ctx.student, tokenizer, state.teacher_state_dict(), state.state_dict())
    save_checkpoint(run.path, state.step, parts, keep=keep)


def restore_from_checkpoint(run: RunDir, state: TrainState) -> None:
    """Load the newest complete checkpoint into the student and ``state``; without one, start at step 0.

    ``metrics.jsonl`` is cut back to the restored step, so no row is logged twice.
    """
    student = state.ctx.student
    ckpt = load_latest_checkpoint(run.path, next(student.parameters()).dtype)
    if ckpt is None:
        print(f"no complete checkpoint in {run.path}; starting from step 0")
        run.truncate_metrics(-1)
        return
    student.load_state_dict(ckpt.model_state)  # strict: any mismatch is an error, not a silent skip
    state.load_state_dict(ckpt.state, ckpt.teacher_state)
    run.truncate_metrics(state.step)
    print(f"resumed from {ckpt.path} (step {state.step})")
