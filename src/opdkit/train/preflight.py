"""Checks of everything a run will need later, made before the run directory is created and before step 1.

A training run that fails after hours because its evaluation file names an unknown verifier, or a run
folder left behind by a teacher server that was down at start, costs the user far more than the second
these checks take. ``preflight(cfg)`` raises ``PreflightError`` with one line naming the key or file:

- ``model.student`` / ``teacher.path``: an existing model directory (a ``config.json`` in it), or a hub id;
- the method's external teacher: ``teacher.kind`` set; a server teacher's ``teacher.url`` answers
  ``GET /v1/models`` with 200 (so its key is accepted), ``teacher.api_key_env`` names a set variable;
- ``data.train`` / ``data.eval``: the data loads, and every row's verifier (with its options) is known;
- ``eval.*``: valid sampling settings for the evaluation.

The synthetic task of a warm-started ``model.student: tiny`` is generated later by the warm start itself and
always uses the task's own verifiers, so it is not loaded here.

Example::

    preflight(load_config("tiny/scope"))  # raises PreflightError("teacher.url: ...") when the server is down
"""

from __future__ import annotations

import os
from pathlib import Path

from opdkit.eval import resolve_examples
from opdkit.eval.evaluate import VerifierCache
from opdkit.rollout import SamplingParams
from opdkit.train.config import TrainConfig
from opdkit.train.methods import METHODS
from opdkit.train.setup import server_api_key, task_source


class PreflightError(ValueError):
    """Something the run needs later is missing or invalid; the message names the key or file."""


def preflight(cfg: TrainConfig) -> None:
    """Raise ``PreflightError`` for the first problem found (see the module docstring)."""
    check_model_dir("model.student", cfg.model.student)
    if METHODS.get(cfg.method.name).uses_teacher:
        _check_teacher(cfg)
    _check_eval_settings(cfg)
    _check_data(cfg, "data.train", cfg.data.train, "train", limit=0)
    if cfg.data.eval:
        _check_data(cfg, "data.eval", cfg.data.eval, "eval", limit=cfg.eval.num_problems)


def _looks_like_hub_id(name: str) -> bool:
    """``org/name`` (what ``from_pretrained`` resolves through the hub cache), not a filesystem path."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and "\\" not in name


def check_model_dir(key: str, path: str) -> None:
    if path == "tiny":
        return
    if not path:
        raise PreflightError(f"{key} is empty: give a model directory (or 'tiny')")
    folder = Path(path).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise PreflightError(f"{key}: {path} is not a Hugging Face model directory (no config.json)")
        return
    if not _looks_like_hub_id(path):
        raise PreflightError(f"{key}: no model directory {path}")


def _check_teacher(cfg: TrainConfig) -> None:
    t = cfg.teacher
    if t.kind == "none":
        raise PreflightError(
            f"teacher.kind: method {cfg.method.name} needs an external teacher: "
            "set teacher.kind=local or server"
        )
    _TEACHER_CHECKS[t.kind](cfg)


def _check_teacher_model(cfg: TrainConfig) -> None:
    """A teacher loaded in this process (``local``, ``unreliable``): its model directory."""
    t = cfg.teacher
    if t.path in ("", "tiny") and cfg.model.student != "tiny":
        raise PreflightError(
            f"teacher.path: teacher.kind={t.kind} needs a model directory (or model.student=tiny)"
        )
    check_model_dir("teacher.path", t.path or "tiny")


def _check_teacher_server(cfg: TrainConfig) -> None:
    t = cfg.teacher
    if not t.url:
        raise PreflightError("teacher.url: teacher.kind=server needs the server's base URL")
    if t.api_key_env and not t.api_key and t.api_key_env not in os.environ:
        raise PreflightError(f"teacher.api_key_env: environment variable {t.api_key_env} is not set")
    _check_server(t.url, server_api_key(t), min(t.timeout_s, 10.0))


# teacher.kind -> what must hold before step 1 (every kind of ``TeacherConfig.kind`` but "none")
_TEACHER_CHECKS = {
    "local": _check_teacher_model,
    "unreliable": _check_teacher_model,
    "server": _check_teacher_server,
}


def _check_server(url: str, api_key: str | None, timeout_s: float) -> None:
    import httpx

    base = url.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{base}/v1/models", headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise PreflightError(
            f"teacher.url: the teacher server {base} is not reachable ({type(exc).__name__}: {exc})"
        ) from None
    if response.status_code in (401, 403):
        raise PreflightError(
            f"teacher.api_key: the teacher server {base} refused the key (HTTP {response.status_code}); "
            "set teacher.api_key or teacher.api_key_env"
        )
    if response.status_code != 200:
        raise PreflightError(f"teacher.url: {base}/v1/models answered HTTP {response.status_code}")


def _check_eval_settings(cfg: TrainConfig) -> None:
    e = cfg.eval
    try:
        SamplingParams(n=e.k, temperature=e.temperature, top_p=e.top_p,
                       max_new_tokens=e.max_new_tokens or cfg.rollout.max_new_tokens)  # fmt: skip
    except ValueError as exc:
        raise PreflightError(f"eval: {exc}") from None


def _check_data(cfg: TrainConfig, key: str, spec: str, split: str, *, limit: int) -> None:
    if spec == "task" and cfg.model.student == "tiny":
        return  # generated by the warm start with the task's own verifiers
    try:
        examples = resolve_examples(spec, split, task_source(cfg))
    except (OSError, ValueError, KeyError) as exc:
        raise PreflightError(f"{key}: {str(exc).strip(chr(39))}") from None
    if not examples:
        raise PreflightError(f"{key}: {spec} has no rows")
    verifiers = VerifierCache()
    for ex in examples[:limit] if limit else examples:
        try:
            verifiers.get(ex)
        except (KeyError, TypeError, ValueError) as exc:
            raise PreflightError(f"{key}: {spec}, row {ex.problem_id}: {str(exc).strip(chr(39))}") from None
