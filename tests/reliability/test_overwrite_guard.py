"""``--overwrite`` deletes only a recognisable run directory, never the working folder, one of its parents,
the home folder or /; anything else is refused with one line and exit code 2, and nothing is deleted."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import assert_clean_refusal, invoke

from opdkit.train.config import load_config
from opdkit.train.rundir import RunDir, RunDirError


def _user_files(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"notes.txt": "my notes", "config.yaml": "steps: 3\n", "model_cache/weights.bin": "x" * 10}
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return files


def _intact(folder: Path, files: dict[str, str]) -> bool:
    return all((folder / name).read_text() == text for name, text in files.items())


def test_overwrite_of_the_working_folder_is_refused_and_nothing_is_deleted(tmp_path, monkeypatch):
    work = tmp_path / "work"
    files = _user_files(work)
    monkeypatch.chdir(work)
    result = invoke("train", "tiny/grpo", "--output", ".", "--overwrite")
    assert_clean_refusal(result, "--overwrite refuses to delete", "working folder")
    assert _intact(work, files)


def test_even_a_run_directory_that_is_the_working_folder_or_its_parent_is_kept(tmp_path, monkeypatch):
    cfg = load_config(None)
    run = RunDir.open(tmp_path / "run", cfg).path  # a genuine run directory
    (run / "checkpoints").mkdir()
    monkeypatch.chdir(run / "checkpoints")
    for target in (run / "checkpoints" / "..", Path("..")):
        with pytest.raises(RunDirError, match="working folder, one of its parents"):
            RunDir.open(target, cfg, overwrite=True)
    assert (run / "config.yaml").is_file()


def test_the_home_folder_is_refused(tmp_path, monkeypatch):
    home = tmp_path / "home"
    RunDir.open(home, load_config(None))  # looks like a run, but it is $HOME
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(RunDirError, match="home folder"):
        RunDir.open(home, load_config(None), overwrite=True)
    assert (home / "config.yaml").is_file()


@pytest.mark.parametrize("extra", ["notes.txt", "model_cache"])
def test_a_folder_with_foreign_entries_is_refused(extra, tmp_path):
    folder = tmp_path / "not_a_run"
    files = _user_files(folder)
    result = invoke("train", "tiny/grpo", "--output", folder, "--overwrite")
    assert_clean_refusal(result, "not an opdkit run directory", extra)
    assert _intact(folder, files)


def test_a_folder_without_config_yaml_is_refused(tmp_path):
    folder = tmp_path / "eval_only"
    (folder / "eval").mkdir(parents=True)
    (folder / "eval" / "summary.json").write_text("{}")
    with pytest.raises(RunDirError, match="not an opdkit run directory"):
        RunDir.open(folder, load_config(None), overwrite=True)
    assert (folder / "eval" / "summary.json").is_file()


def test_a_real_run_directory_is_replaced(tmp_path):
    cfg = load_config(None)
    run = RunDir.open(tmp_path / "run", cfg)
    run.log({"step": 1, "loss/total": 0.5})
    (run.path / "checkpoints" / "step_1").mkdir(parents=True)
    (run.path / ".metrics.jsonl.abc").write_text("torn temporary")  # an atomic write's leftover
    RunDir.open(run.path, cfg, overwrite=True)
    assert not (run.path / "metrics.jsonl").exists() and not (run.path / "checkpoints").exists()
    assert (run.path / "config.yaml").is_file()


def test_a_run_that_never_started_does_not_block_a_plain_rerun(tmp_path):
    # config.yaml and provenance.json only: what a run that failed before step 1 leaves behind
    cfg = load_config(None)
    RunDir.open(tmp_path / "run", cfg)
    RunDir.open(tmp_path / "run", load_config(None, ["steps=7"]))  # no --overwrite needed, nothing lost
    assert "steps: 7" in (tmp_path / "run" / "config.yaml").read_text()
    RunDir(tmp_path / "run").log({"step": 1})
    with pytest.raises(RunDirError, match="already exists"):  # once a step is logged it is a real run
        RunDir.open(tmp_path / "run", cfg)
