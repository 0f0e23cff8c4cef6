"""Atomic checkpoints and resume: nothing half-written is ever mistaken for a checkpoint.

Layout of ``checkpoints/step_N/``::

    model/            the student (``save_pretrained``: config + safetensors) and its tokenizer
    teacher.safetensors  the self-teacher's own weights (EMA / base copy), when it has any
    state.pt          optimizer, scheduler, RNG states, data position, step, method state
                      (read back with ``torch.load(weights_only=True)``)
    COMPLETE          written last

A checkpoint is written to ``step_N.tmp-<pid>`` and renamed into place, so a kill at any point leaves either
the previous checkpoints or a stray temporary folder (removed on the next save, and before a resume writes
anything, so a stray cannot keep a full disk full). A save that fails (a full disk, an I/O error) removes its
temporary folder and raises ``CheckpointWriteError`` with a one-line message ("no space left on device while
writing checkpoint step N at PATH"); the previous checkpoints are untouched. ``latest_checkpoint`` skips,
with a message, folders without ``COMPLETE`` or whose state or model config is unreadable;
``load_latest_checkpoint`` (resume) also reads the weights and falls back past checkpoints that fail to load,
moving them aside to ``step_N.unreadable`` so they never count as one of the ``keep`` newest.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP_RE = re.compile(r"^step_(\d+)$")
_FULL_DISK_BYTES = 1 << 20  # free space below this at the moment a write fails: the disk is full


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; its temporary folder was removed, older checkpoints are intact."""


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous copies (safetensors refuses tensors that share storage, e.g. tied embeddings)."""
    return {k: v.detach().clone().contiguous().cpu() for k, v in state.items()}


@dataclass(frozen=True)
class CheckpointParts:
    """What one checkpoint holds (``state`` is a plain dict of tensors and Python values)."""

    model: torch.nn.Module
    tokenizer: Any
    teacher_state: dict[str, torch.Tensor]
    state: dict[str, Any]


def save_checkpoint(run_dir: Path, step: int, parts: CheckpointParts, *, keep: int = 2) -> Path:
    """Write ``checkpoints/step_<step>`` atomically and keep only the newest ``keep`` complete ones.

    Raises ``CheckpointWriteError`` (after removing the partial folder) if any file cannot be written.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    remove_partial_checkpoints(run_dir)
    final = root / f"step_{step}"
    tmp = root / f"step_{step}.tmp-{os.getpid()}"
    try:
        _write(tmp, step, parts)
    except Exception as exc:
        reason = _failure_reason(exc, root)  # before the clean-up frees the space
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(f"{reason} while writing checkpoint step {step} at {final}") from exc
    if final.exists():  # re-saving the same step (e.g. the final step after a resume)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in complete_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write(tmp: Path, step: int, parts: CheckpointParts) -> None:
    parts.model.save_pretrained(tmp / "model", safe_serialization=True)
    if parts.tokenizer is not None:
        parts.tokenizer.save_pretrained(tmp / "model")
    if parts.teacher_state:
        from safetensors.torch import save_file

        save_file(_unshared(parts.teacher_state), str(tmp / "teacher.safetensors"))
    torch.save(parts.state, tmp / "state.pt")
    (tmp / "COMPLETE").write_text(f"{step}\n")
    _fsync_dir(tmp)


def _failure_reason(exc: BaseException, root: Path) -> str:
    """One line: the OS error's text when there is one, else "no space left on device" when the disk is
    (nearly) full, else the exception's first line. torch's writer reports a full disk only as
    "unexpected pos A vs B" and safetensors as "... (os error 28)", hence the probes."""
    chain = [exc, *(e for e in (exc.__cause__, exc.__context__) if e is not None)]
    for e in chain:
        if isinstance(e, OSError) and e.errno:
            return os.strerror(e.errno)[:1].lower() + os.strerror(e.errno)[1:]
    text = " ".join(str(e) for e in chain)
    try:
        full = shutil.disk_usage(root).free < _FULL_DISK_BYTES
    except OSError:
        full = False
    if full or "os error 28" in text or "No space left" in text:
        return "no space left on device"
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}"


def remove_partial_checkpoints(run_dir: Path) -> None:
    """Remove the temporary folders of saves that were killed (they hold space and are never resumed)."""
    for stray in (Path(run_dir) / "checkpoints").glob("step_*.tmp-*"):
        shutil.rmtree(stray, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _STEP_RE.match(d.name)
        if m and (d / "COMPLETE").is_file():
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found)]


def load_state(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt / "state.pt", weights_only=True)


def load_teacher_state(ckpt: Path) -> dict[str, torch.Tensor]:
    path = ckpt / "teacher.safetensors"
    if not path.exists():
        return {}
    from safetensors.torch import load_file

    return load_file(str(path))


def _check_files(ckpt: Path) -> None:
    """Cheap checks of a complete checkpoint: the state loads and the model config is there."""
    load_state(ckpt)
    if not (ckpt / "model" / "config.json").is_file():
        raise FileNotFoundError("model/config.json missing")


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _report_incomplete(run_dir: Path, log: Callable[[str], None]) -> None:
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if _STEP_RE.match(d.name) and not (d / "COMPLETE").is_file():
                log(f"skipping incomplete checkpoint {d} (no COMPLETE marker)")


def latest_checkpoint(run_dir: Path, log: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint that is complete and loads; broken ones are reported and skipped."""
    _report_incomplete(run_dir, log)
    for ckpt in reversed(complete_checkpoints(run_dir)):
        try:
            _check_files(ckpt)
        except Exception as exc:  # a corrupt file: fall back to the previous checkpoint
            log(f"skipping corrupt checkpoint {ckpt}: {exc}")
            continue
        return ckpt
    return None


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read into memory: the student's weights, the self-teacher's ({} if none), the state."""

    path: Path
    model_state: dict[str, torch.Tensor]
    teacher_state: dict[str, torch.Tensor]
    state: dict[str, Any]


def load_latest_checkpoint(
    run_dir: Path, dtype: torch.dtype, log: Callable[[str], None] = print
) -> LoadedCheckpoint | None:
    """Read the newest checkpoint whose every file loads, for a resume.

    Newest first; one that fails to load (a corrupt safetensors file, a truncated state) is reported in one
    line and moved aside to ``step_N.unreadable`` (kept for inspection, never counted among the ``keep``
    newest, so the resumed run's saves cannot delete the good checkpoint it resumed from), and the previous
    one is tried. Everything is read before anything is applied: a failure never leaves a half-restored run.
    """
    _report_incomplete(run_dir, log)
    for ckpt in reversed(complete_checkpoints(run_dir)):
        try:
            _check_files(ckpt)
            loaded = LoadedCheckpoint(
                ckpt, _load_model_state(ckpt / "model", dtype), load_teacher_state(ckpt), load_state(ckpt)
            )
        except Exception as exc:
            aside = _move_aside(ckpt)
            log(f"skipping unreadable checkpoint {ckpt} ({_one_line(exc)}); moved to {aside.name}")
            continue
        return loaded
    return None


def _load_model_state(model_dir: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The saved student's weights; a weight missing from the files is an error, never a random init."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, output_loading_info=True)
    absent = [*info.get("missing_keys", ()), *info.get("mismatched_keys", ())]
    if absent:
        raise ValueError(f"weights missing or mis-shaped in {model_dir}: {sorted(map(str, absent))[:3]}")
    return model.state_dict()


def _move_aside(ckpt: Path) -> Path:
    aside, n = ckpt.with_name(f"{ckpt.name}.unreadable"), 1
    while aside.exists():
        aside, n = ckpt.with_name(f"{ckpt.name}.unreadable-{n}"), n + 1
    os.replace(ckpt, aside)
    return aside
