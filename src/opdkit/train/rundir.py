"""The run directory: resolved config, metrics log, evaluation records, checkpoints, provenance.

    <run>/config.yaml        the resolved TrainConfig (every key, defaults included)
    <run>/metrics.jsonl      one JSON object per logged step (namespaced keys, ``step`` first)
    <run>/diagnostics.jsonl  per-question / per-row values of methods that log them (``Prepared.diagnostics``)
    <run>/eval/              per-sample records ``step_N.jsonl`` and ``summary.json``
    <run>/checkpoints/step_N/  see ``opdkit.train.checkpoint``
    <run>/provenance.json    opdkit/torch/transformers versions and the git commit + diff of the code, if any

A run directory is never overwritten unless asked (``overwrite=True`` deletes it first); ``resume=True``
keeps it and truncates ``metrics.jsonl`` to the resumed checkpoint's step so rows are never duplicated.

Safety rules (docs/reliability.md):
- ``overwrite`` deletes only a folder that is recognisably a run directory (``config.yaml`` and nothing but
  the entries of ``RUN_ENTRIES``), never the working folder, one of its ancestors, the home folder or ``/``.
- A folder holding only ``config.yaml``/``provenance.json`` (a run that failed before its first step) does
  not block a plain re-run: nothing in it is lost by starting again.
- ``resume`` refuses a config that differs from the saved one except in ``RESUMABLE_KEYS``.
- Keys named ``api_key`` are written to ``config.yaml`` as ``<redacted>``.
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
    """The run directory cannot be used as asked: it exists and neither resume nor overwrite was asked for,
    ``overwrite`` points at something that is not a run directory, or ``resume`` changes the config."""


# What a run directory holds at its top level (see the module docstring); ``plots`` is ``opdkit plot``'s
# default output. Hidden files starting with one of these names are their atomic-write temporaries.
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "eval", "checkpoints", "provenance.json", "plots")
# Written before the first step: a folder holding only these lost nothing if it is started again.
_SETUP_ENTRIES = ("config.yaml", "provenance.json")
# Keys a resumed run may change: how long it runs and how often it logs, evaluates and saves, and how the
# teacher server is reached. Any other change would make the saved config claim values that did not run.
RESUMABLE_KEYS = (
    "steps", "log_every", "checkpoint_every", "keep_checkpoints", "eval.every", "eval.at_start",
    "teacher.api_key", "teacher.api_key_env", "teacher.timeout_s", "teacher.max_retries",
)  # fmt: skip
REDACTED = "<redacted>"


def _entry_known(name: str, known: tuple[str, ...]) -> bool:
    return name in known or any(name.startswith(f".{k}.") for k in known)


def _holds_only(path: Path, known: tuple[str, ...]) -> bool:
    return all(_entry_known(entry.name, known) for entry in path.iterdir())


def check_deletable(path: Path) -> None:
    """Raise ``RunDirError`` unless ``path`` may be deleted by ``overwrite`` (see the module docstring)."""
    target = path.resolve()
    cwd = Path.cwd().resolve()
    protected = {Path("/").resolve(), Path.home().resolve(), cwd, *cwd.parents}
    if target in protected:
        raise RunDirError(f"--overwrite refuses to delete {path}: it is the working folder, one of its "
                          "parents, the home folder or /; choose another --output")  # fmt: skip
    if not target.is_dir() or not (target / "config.yaml").is_file() or not _holds_only(target, RUN_ENTRIES):
        foreign = sorted(e.name for e in target.iterdir() if not _entry_known(e.name, RUN_ENTRIES))[:3]
        raise RunDirError(
            f"--overwrite refuses to delete {path}: not an opdkit run directory (it needs config.yaml and "
            f"only {', '.join(RUN_ENTRIES)}{'; found ' + ', '.join(foreign) if foreign else ''})"
        )


def redact(raw: Any) -> Any:
    """A copy of a nested config dict with every non-empty ``api_key`` replaced by ``REDACTED``."""
    if isinstance(raw, dict):
        return {k: REDACTED if k == "api_key" and v else redact(v) for k, v in raw.items()}
    return raw


def _flat(raw: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {prefix: raw}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose value differs between two config dicts (keys missing on either side are skipped:
    a key added by a newer opdkit has its default, the value the saved run used)."""
    old, cur = _flat(redact(saved)), _flat(redact(new))
    return sorted(k for k in old.keys() & cur.keys() if old[k] != cur[k])


def _check_resume_config(path: Path, new: dict[str, Any]) -> None:
    saved_path = path / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    refused = [k for k in config_changes(saved, new) if k not in RESUMABLE_KEYS and not k.startswith("verl.")]
    if refused:
        raise RunDirError(
            f"--resume refuses a config that differs from {saved_path} in: {', '.join(refused)} "
            f"(only {', '.join(RESUMABLE_KEYS)} may change); start a new run or use the saved values"
        )


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
        raw = redact(to_dict(config))
        if run.path.exists() and resume:
            _check_resume_config(run.path, raw)
        elif run.path.exists() and any(run.path.iterdir()):
            never_started = run.path.is_dir() and _holds_only(run.path, _SETUP_ENTRIES)
            if not (overwrite or never_started):
                raise RunDirError(
                    f"run directory {run.path} already exists; pass --resume to continue it or --overwrite "
                    "to replace it"
                )
            check_deletable(run.path)
            shutil.rmtree(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        _atomic_write(run.path / "config.yaml", yaml.safe_dump(raw, sort_keys=False))
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

    def add_to_step(self, step: int, values: dict[str, Any]) -> None:
        """Merge ``values`` into the last row when it is ``step``'s (rewritten atomically), else append a row
        ``{"step": step, **values}``: evaluation results join their step's row after its checkpoint."""
        lines = (
            self.metrics_path.read_text(encoding="utf-8").splitlines() if self.metrics_path.exists() else []
        )
        try:
            last = json.loads(lines[-1]) if lines else {}
        except json.JSONDecodeError:
            last = {}
        if last.get("step") != step:
            self.log({"step": step, **values})
            return
        lines[-1] = json.dumps({**last, **{k: _json_safe(v) for k, v in values.items()}})
        _atomic_write(self.metrics_path, "".join(line + "\n" for line in lines))

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
