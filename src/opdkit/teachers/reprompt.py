"""SDPO's self-teacher context: which sibling demonstrates, when feedback is used, and the reprompt text.

§4.2-§4.5 (lasgroup/SDPO ``_maybe_build_self_distillation_batch``). For rollout i of question q:

    S_q     = {j in G_q : success_j}
    cand_i  = S_q minus {i}              (dont_reprompt_on_self_success, default)    else S_q
    demo_i  = text of the first element of cand_i in batch order, or None
    use_fb  = has_feedback_i and (not feedback_only_without_solution or demo_i is None)
              (has_feedback_i: the feedback is not empty or whitespace only)
    sd_mask = demo_i is not None or use_fb

The teacher sees the original conversation with only its last user message rewritten:

    prompt + "\\nCorrect solution:\\n\\n" + demo                                  (if demo)
      + "\\nThe following is feedback from your unsuccessful earlier attempt:\\n\\n"
      + feedback                                                                    (if use_fb)
      + "\\n\\nCorrectly solve the original question."                             (if either)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_THINK_RE = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


@dataclass(frozen=True)
class RepromptTemplate:
    """The three template strings (lasgroup/SDPO yaml; TRL adds only whitespace)."""

    solution: str = "\nCorrect solution:\n\n{demonstration}"
    feedback: str = "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback}"
    instruction: str = "\n\nCorrectly solve the original question."


@dataclass(frozen=True)
class RepromptPlan:
    """Per rollout: the demonstration index (or -1), whether feedback is used, and the SDPO mask."""

    demo_index: list[int]
    use_feedback: list[bool]
    sd_mask: list[bool]


def plan_reprompts(
    group_ids: Sequence[int],
    success: Sequence[bool],
    feedback: Sequence[str],
    *,
    dont_reprompt_on_self_success: bool = True,
    include_environment_feedback: bool = False,
    feedback_only_without_solution: bool = True,
) -> RepromptPlan:
    """Choose each rollout's demonstration (first successful sibling in batch order) and feedback use."""
    first_two: dict[int, list[int]] = {}
    for j, (g, ok) in enumerate(zip(group_ids, success)):
        if ok and len(first_two.setdefault(g, [])) < 2:
            first_two[g].append(j)  # two suffice: the first one that is not i
    demo_index, use_feedback, sd_mask = [], [], []
    for i, g in enumerate(group_ids):
        cands = [j for j in first_two.get(g, []) if not (dont_reprompt_on_self_success and j == i)]
        demo = cands[0] if cands else -1
        # whitespace-only feedback is no feedback (the reference keeps only strings with a non-blank strip())
        has_fb = include_environment_feedback and bool(feedback[i] and feedback[i].strip())
        use_fb = has_fb and (not feedback_only_without_solution or demo < 0)
        demo_index.append(demo)
        use_feedback.append(use_fb)
        sd_mask.append(demo >= 0 or use_fb)
    return RepromptPlan(demo_index=demo_index, use_feedback=use_feedback, sd_mask=sd_mask)


def strip_thinking(text: str) -> str:
    """Remove every ``<think>...</think>`` block and the whitespace after it (non-greedy)."""
    return _THINK_RE.sub("", text)


def reprompt_user_text(
    prompt_text: str,
    demonstration: str | None,
    feedback: str | None,
    template: RepromptTemplate = RepromptTemplate(),
) -> str:
    """The rewritten last user message (§4.4); the prompt itself when neither part is given."""
    parts = [prompt_text]
    if demonstration is not None:
        parts.append(template.solution.format(demonstration=demonstration))
    if feedback and feedback.strip():
        parts.append(template.feedback.format(feedback=feedback))
    if len(parts) == 1:
        return prompt_text
    return "".join(parts) + template.instruction
