"""The run directory: resolved config, metrics log, evaluation records, checkpoints, provenance.

    <run>/config.yaml        the resolved TrainConfig (every key, defaults included)
    <run>/metrics.jsonl      one JSON object per logged step (namespaced keys, ``step`` first)
    <run>/diagnostics.jsonl  per-question / per-row values of methods that log them (``Prepared.diagnostics``)
    <run>/eval/              per-sample records ``step_N.jsonl`` and ``summary.json``
    <run>/checkpoints/step_N/  see ``opdkit.train.checkpoint``
    <run>/provenance.json    opdkit/torch/transformers versions and the git commit + diff of the code, if any

A run directory is never overwritten unless asked (``overwrite=True`` deletes it first); ``resume=True``
keeps it and truncates ``metrics.jsonl`` to the resumed checkpoint's step so rows are never duplicated.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

import opdkit
from opdkit.train.configio import to_dict


class RunDirError(FileExistsError):
    """The run directory exists and neither resume nor overwrite was asked for."""


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible
    return value


class RunDir:
    """A run directory; create it with ``RunDir.open``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.metrics_path = self.path / "metrics.jsonl"
        self.diagnostics_path = self.path / "diagnostics.jsonl"
        self.eval_dir = self.path / "eval"

    @classmethod
    def open(cls, path: str | Path, config: Any, *, resume: bool = False, overwrite: bool = False) -> RunDir:
        run = cls(Path(path))
        if run.path.exists() and any(run.path.iterdir()) and not resume:
            if not overwrite:
                raise RunDirError(
                    f"run directory {run.path} already exists; pass --resume to continue it or --overwrite "
                    "to replace it"
                )
            shutil.rmtree(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        _atomic_write(run.path / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
        if not (run.path / "provenance.json").exists():
            _atomic_write(run.path / "provenance.json", json.dumps(_provenance(), indent=2) + "\n")
        return run

    def log(self, row: dict[str, Any]) -> None:
        """Append one metrics row and flush it to the OS (a killed process loses at most the row being
        written). Not fsynced here (milliseconds per step on a small model): ``sync`` does it before each
        checkpoint, and a resume drops the rows after the checkpoint anyway."""
        _append(self.metrics_path, {k: _json_safe(v) for k, v in row.items()})

    def log_diagnostics(self, step: int, values: dict[str, list[float]]) -> None:
        """Append one step's per-question / per-row lists (rounded to 5 significant digits: plots only)."""
        rounded = {k: [_json_safe(float(f"{float(v):.5g}")) for v in vs] for k, vs in values.items()}
        _append(self.diagnostics_path, {"step": step, **rounded})

    def sync(self) -> None:
        """Force the metrics written so far to disk (survives a machine crash, not only a killed process)."""
        if self.metrics_path.exists():
            with open(self.metrics_path, "a", encoding="utf-8") as fh:
                os.fsync(fh.fileno())

    def truncate_metrics(self, last_step: int) -> None:
        """Drop rows of steps after ``last_step`` (and a torn last line) before resuming."""
        for path in (self.metrics_path, self.diagnostics_path):
            _truncate(path, last_step)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]


def _append(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()


def _truncate(path: Path, last_step: int) -> None:
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill
        if row.get("step", -1) <= last_step:
            kept.append(line)
    _atomic_write(path, "".join(k + "\n" for k in kept))


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def _provenance() -> dict[str, Any]:
    import torch
    import transformers

    src = Path(opdkit.__file__).resolve().parent
    return {
        "opdkit": opdkit.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "git_commit": (_git(["rev-parse", "HEAD"], src) or "").strip() or None,
        "git_diff": _git(["diff", "HEAD", "--", "."], src),
    }
