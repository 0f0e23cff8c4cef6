"""Self-teacher contexts from a verl step batch, built by the same code as ``opdkit train`` (§4.2-§4.5).

verl's agent loop stores one TransferQueue row per rollout with (among others) ``raw_prompt`` (the chat
messages), ``responses`` (nested int64 ids), ``response_mask``, ``uid`` (one per question), ``rm_scores``
(the outcome reward on the last response token) and ``extra_fields`` (a dict per row whose
``reward_extra_info`` holds what the reward function returned besides the score, e.g. the verifier's
feedback). ``rollout_texts`` turns those fields into ``opdkit.teachers.self_teacher.RolloutTexts`` exactly as
``opdkit train``'s rollout step builds them (responses decoded with special tokens skipped, success =
reward >= threshold, groups numbered by first appearance), and ``teacher_inputs`` calls
``build_teacher_context`` (the sibling's answer or the feedback in the last user message, the chat template
re-applied, never a row's own answer as its demonstration) and appends each row's own response ids:

    teacher_input_ids[i] = teacher_prompt_ids[i] ⊕ response_ids[i]

so the teacher's logits at positions P_i^T − 1 .. P_i^T + R_i − 2 score the student's exact response tokens.
The demonstration is the first successful sibling in the step's row order (verl's key order), as in
``opdkit train``'s (group-contiguous) batch order.

No verl import: torch, tensordict and opdkit.teachers only (the trainer in ``sdpo_trainer.py`` does the
TransferQueue I/O).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict

from opdkit.integrations.verl.fields import group_ids_from_uids
from opdkit.teachers.self_teacher import RolloutTexts, SelfTeacherOptions, build_teacher_context

#: TransferQueue fields the teacher contexts are built from.
CONTEXT_FIELDS = ("raw_prompt", "responses", "response_mask", "uid", "rm_scores", "extra_fields")


@dataclass(frozen=True)
class StepRollouts:
    """The step's rollouts as the self-teacher needs them: texts (``RolloutTexts``), the response ids
    (N lists, valid tokens only) and the outcome rewards (N,)."""

    texts: RolloutTexts
    response_ids: list[list[int]]
    rewards_N: torch.Tensor


@dataclass(frozen=True)
class TeacherInputs:
    """Per row: the teacher's input ids (teacher prompt ⊕ own response), its prompt length P_i^T; the
    self-distillation mask sd_mask_N (N,) bool and the ``sdpo/*`` statistics of ``build_teacher_context``."""

    input_ids: list[list[int]]
    prompt_lens: list[int]
    sd_mask_N: torch.Tensor
    stats: dict[str, float]


def _non_tensor_list(data: TensorDict, name: str) -> list[Any]:
    if name not in data.keys():  # noqa: SIM118  (TensorDict refuses `in` on itself)
        raise KeyError(f"the step batch has no field {name!r}; fields: {sorted(data.keys())}")
    value = data[name]
    return list(value.tolist()) if hasattr(value, "tolist") else list(value)


def _feedback(extra_fields: Sequence[Any], key: str) -> list[str]:
    """The verifier's feedback per row from ``extra_fields.reward_extra_info[key]`` ("" when absent)."""
    out = []
    for extra in extra_fields:
        info = extra.get("reward_extra_info", {}) if isinstance(extra, dict) else {}
        value = info.get(key) if isinstance(info, dict) else None
        out.append("" if value is None else str(value))
    return out


def _valid_ids(responses: Any, response_mask: Any) -> list[list[int]]:
    """Nested (jagged) responses and masks -> the ids of the valid tokens of each row."""
    return [r[m.bool()].tolist() for r, m in zip(responses.unbind(), response_mask.unbind())]


def rollout_texts(
    data: TensorDict, tokenizer: Any, *, success_threshold: float = 0.5, feedback_key: str = "feedback"
) -> StepRollouts:
    """The step's TransferQueue fields (``CONTEXT_FIELDS``; ``extra_fields`` optional) -> ``StepRollouts``.

    Rewards are ``rm_scores`` summed over the response (verl's outcome reward sits on the last token).
    """
    response_ids = _valid_ids(data["responses"], data["response_mask"])
    rewards_N = data["rm_scores"].sum(dim=-1).to(torch.float32)
    if rewards_N.is_nested:
        rewards_N = torch.stack([row.sum() for row in data["rm_scores"].unbind()]).to(torch.float32)
    n = len(response_ids)
    has_extra = "extra_fields" in data.keys()  # noqa: SIM118
    extra = _non_tensor_list(data, "extra_fields") if has_extra else [{}] * n
    texts = RolloutTexts(
        messages=[list(m) for m in _non_tensor_list(data, "raw_prompt")],
        response_texts=tokenizer.batch_decode(response_ids, skip_special_tokens=True),
        success=(rewards_N >= success_threshold).tolist(),
        feedback=_feedback(extra, feedback_key),
        group_ids=group_ids_from_uids(_non_tensor_list(data, "uid")).tolist(),
    )
    return StepRollouts(texts=texts, response_ids=response_ids, rewards_N=rewards_N)


def teacher_inputs(
    tokenizer: Any,
    rollouts: StepRollouts,
    options: SelfTeacherOptions,
    chat_kwargs: dict | None = None,
) -> TeacherInputs:
    """Each row's teacher input ids (teacher prompt ⊕ own response, module docstring) and the SDPO mask."""
    context = build_teacher_context(tokenizer, rollouts.texts, options, chat_kwargs)
    input_ids = [list(p) + list(r) for p, r in zip(context.prompt_ids, rollouts.response_ids)]
    return TeacherInputs(
        input_ids=input_ids,
        prompt_lens=[len(p) for p in context.prompt_ids],
        sd_mask_N=context.sd_mask_N,
        stats=dict(context.stats),
    )
