"""Checkpoint faults: weights that fail to load, and a disk that fills up during a save.

Every test compares with one straight 4-step SDPO run (checkpoints at steps 2 and 4): after the fault, a
resume continues from the step-2 checkpoint and must log the straight run's rows and end with its weights.
Before these fixes a corrupt ``model.safetensors`` was a traceback on ``--resume``, and a full disk was a
torch "unexpected pos" error that left a ``step_N.tmp-*`` folder keeping the disk full, so resume failed too.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from tiny_run_parts import build_parts, run_overrides

import opdkit.train.checkpoint as checkpoint
from opdkit.train import load_config, train
from opdkit.train.checkpoint import load_latest_checkpoint

CKPT_CFG = ["checkpoint_every=2", "keep_checkpoints=5"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    return build_parts(tmp_path_factory.mktemp("ckpt_parts"))


def _cfg(parts, *extra):
    return load_config(None, [*run_overrides(parts, "sdpo", steps=4), *CKPT_CFG, *extra])


@pytest.fixture(scope="module")
def straight(parts, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ckpt_straight") / "run"
    assert train(_cfg(parts), run).status == "completed"
    return run


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step}" / "model" / "model.safetensors"))


def _assert_resume_reproduces(run: Path, straight: Path, parts, capsys) -> str:
    result = train(_cfg(parts), run, resume=True)
    out = capsys.readouterr().out
    assert result.status == "completed" and result.last_step == 4
    assert "resumed from" in out and "step_2 (step 2)" in out, out
    assert _rows(run) == _rows(straight)
    a, b = _weights(run, 4), _weights(straight, 4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return out


def _damage(ckpt: Path, how: str) -> None:
    if how == "truncated_model":  # a copy or a write cut short
        f = ckpt / "model" / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "garbage_header":  # the 8-byte header length and the JSON header overwritten
        f = ckpt / "model" / "model.safetensors"
        f.write_bytes(b"\xff" * 64 + f.read_bytes()[64:])
    else:  # the EMA self-teacher's weights cut short
        f = ckpt / "teacher.safetensors"
        f.write_bytes(f.read_bytes()[:100])


@pytest.mark.parametrize("how", ["truncated_model", "garbage_header", "truncated_teacher"])
def test_a_checkpoint_that_fails_to_load_is_skipped_with_one_line_and_resume_uses_the_previous(
    how, parts, straight, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    ckpts = run / "checkpoints"
    _damage(ckpts / "step_4", how)

    messages: list[str] = []
    probe = tmp_path / "probe"
    shutil.copytree(run, probe)
    loaded = load_latest_checkpoint(probe, torch.float32, log=messages.append)
    assert (
        loaded is not None and loaded.path == probe / "checkpoints" / "step_2" and loaded.state["step"] == 2
    )
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert "skipping unreadable checkpoint" in messages[0] and "step_4" in messages[0]
    # moved aside: it no longer counts among the newest `keep`, so later saves cannot delete step_2 for it
    assert (probe / "checkpoints" / "step_4.unreadable").is_dir()

    out = _assert_resume_reproduces(run, straight, parts, capsys)
    assert "skipping unreadable checkpoint" in out and "Traceback" not in out
    assert (ckpts / "step_4.unreadable").is_dir() and (ckpts / "step_4" / "COMPLETE").is_file()


def _full_disk_at_step(step: int, monkeypatch, style: str) -> None:
    """``torch.save`` of that step's state writes half its bytes, then the disk is full.

    ``oserror``: the error a Python write gives (errno ENOSPC). ``torch``: what torch's own writer raises on a
    real full disk (measured on a full tmpfs: the errno is lost), with the file system reporting 0 bytes free.
    """
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        if not (isinstance(obj, dict) and obj.get("step") == step):
            return real_save(obj, path, *args, **kwargs)
        real_save(obj, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[: Path(path).stat().st_size // 2])
        if style == "oserror":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: SimpleNamespace(total=1 << 30, free=0))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 330432 vs 330324")

    monkeypatch.setattr(checkpoint.torch, "save", save)


@pytest.mark.parametrize("style", ["oserror", "torch"])
def test_a_full_disk_during_a_save_stops_cleanly_leaves_nothing_partial_and_resume_reproduces(
    style, parts, straight, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _full_disk_at_step(4, m, style)
        result = train(_cfg(parts), run)
    ckpts = run / "checkpoints"
    assert (
        result.status == f"stopped: no space left on device while writing checkpoint step 4 at {ckpts}/step_4"
    )
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_2"]  # no step_4, no step_4.tmp-*
    _assert_resume_reproduces(run, straight, parts, capsys)


def _mount_tmpfs(path: Path, size_k: int, *, remount: bool = False) -> bool:
    opts = f"remount,size={size_k}k" if remount else f"size={size_k}k"
    cmd = (
        ["mount", "-o", opts, str(path)]
        if remount
        else ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)]
    )
    try:
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.slow
def test_a_really_full_tmpfs_then_more_space_resumes_even_with_a_killed_save_filling_the_disk(
    parts, straight, tmp_path, capsys
):
    # 1800 KiB holds the step-2 checkpoint (~960 KiB) and the metrics, not a second checkpoint beside it.
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount_tmpfs(disk, 1800):
        pytest.skip("needs permission to mount a tmpfs (root); the monkeypatched full-disk test runs instead")
    try:
        run = disk / "run"
        result = train(_cfg(parts), run)
        assert result.status.startswith("stopped: no space left on device while writing checkpoint step 4")
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_2"]
        # The user makes room, but a save killed earlier left a folder that fills the disk again: the resume
        # must remove it before writing anything (config.yaml was the first write to fail before).
        assert _mount_tmpfs(disk, 4096, remount=True)
        stray = run / "checkpoints" / "step_6.tmp-99999"
        stray.mkdir()
        with open(stray / "blob", "wb", buffering=0) as fh, pytest.raises(OSError):
            while True:
                fh.write(b"\0" * 65536)
        assert shutil.disk_usage(disk).free < 65536
        _assert_resume_reproduces(run, straight, parts, capsys)
        assert not stray.exists()
    finally:  # lazily if still busy (a failing assertion's traceback can hold a file open on it)
        if subprocess.run(["umount", str(disk)], capture_output=True, timeout=10).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=10)
