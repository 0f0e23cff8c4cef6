"""Atomic checkpoints and resume: nothing half-written is ever mistaken for a checkpoint.

Layout of ``checkpoints/step_N/``::

    model/            the student (``save_pretrained``: config + safetensors) and its tokenizer
    teacher.safetensors  the self-teacher's own weights (EMA / base copy), when it has any
    state.pt          optimizer, scheduler, RNG states, data position, step, method state
                      (read back with ``torch.load(weights_only=True)``)
    COMPLETE          written last

A checkpoint is written to ``step_N.tmp-<pid>`` and renamed into place, so a kill at any point leaves either
the previous checkpoints or a stray temporary folder (removed on the next save). ``latest_checkpoint`` skips,
with a message, folders without ``COMPLETE`` or whose files do not load.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP_RE = re.compile(r"^step_(\d+)$")


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
    """Write ``checkpoints/step_<step>`` atomically and keep only the newest ``keep`` complete ones."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stray in root.glob("step_*.tmp-*"):  # left by a killed save
        shutil.rmtree(stray, ignore_errors=True)
    final = root / f"step_{step}"
    tmp = root / f"step_{step}.tmp-{os.getpid()}"
    parts.model.save_pretrained(tmp / "model", safe_serialization=True)
    if parts.tokenizer is not None:
        parts.tokenizer.save_pretrained(tmp / "model")
    if parts.teacher_state:
        from safetensors.torch import save_file

        save_file(_unshared(parts.teacher_state), str(tmp / "teacher.safetensors"))
    torch.save(parts.state, tmp / "state.pt")
    (tmp / "COMPLETE").write_text(f"{step}\n")
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. the final step after a resume)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in complete_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


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


def latest_checkpoint(run_dir: Path, log: Any = print) -> Path | None:
    """The newest checkpoint that is complete and loads; broken ones are reported and skipped."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if _STEP_RE.match(d.name) and not (d / "COMPLETE").is_file():
                log(f"skipping incomplete checkpoint {d} (no COMPLETE marker)")
    for ckpt in reversed(complete_checkpoints(run_dir)):
        try:
            load_state(ckpt)
            if not (ckpt / "model" / "config.json").is_file():
                raise FileNotFoundError("model/config.json missing")
        except Exception as exc:  # a corrupt file: fall back to the previous checkpoint
            log(f"skipping corrupt checkpoint {ckpt}: {exc}")
            continue
        return ckpt
    return None
