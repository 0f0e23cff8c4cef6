"""The tool-call verifier for ToolAlpaca (§9.3-§9.4; lasgroup/SDPO ``feedback/tooluse.py``).

The gold is a JSON list of calls ``[{"Action": name, "Action_Input": "<JSON object string>"}, ...]``. A
completion is right iff

- the multiset of names after ``Action:`` equals the gold names (order free, duplicates count), and
- the ``Action Input:`` JSON objects merged with ``dict.update`` (later keys win) equal the gold inputs merged
  the same way (Python equality: key order is free, ``"1"`` != ``1``).

``Action Input:`` objects are found with real brace matching, so nested objects work, and an action name may
carry a bracketed tag (a ToolAlpaca gold action is ``[Optional]updateUserProfile``). ``compat_regex=True``
reproduces the reference's regexes instead: the non-greedy ``{.*?}`` match, which cuts nested objects short,
and ``\\w+`` names, under which that gold can never be matched. From a training config:
``data.verifier_options: {toolcall: {compat_regex: true}}``.

Feedback names the failing parts, joined with "; " (exact reference strings, Python reprs):
``Actions mismatch: predicted ['a'], expected ['b']`` and
``Action inputs mismatch: predicted {'q': 1}, expected {'q': 2}``. It reveals the gold call (§9.4).
``pred`` (the maj@k key) is ``Actions: [...], Inputs: {...}`` with the names sorted and the inputs as
key-sorted JSON, so equivalent calls vote together; None when neither an action nor an input was found.

Example::

    gold = '[{"Action": "search", "Action_Input": "{\\"q\\": \\"cats\\"}"}]'
    ToolCallVerifier()('Action: search\\nAction Input: {"q": "cats"}', gold).correct   # True
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from opdkit.rewards.base import VERIFIERS, Verdict
from opdkit.rewards.extract import ToolCalls, parse_tool_calls


@lru_cache(maxsize=4096)
def parse_gold_calls(ground_truth: str) -> ToolCalls:
    """Gold action names (in order) and merged inputs from the gold JSON list.

    An ``Action_Input`` that is not a JSON object (or is missing) contributes nothing, as in the reference.
    A gold that is not a JSON list of objects with an ``"Action"`` raises ValueError (a data error).
    """
    try:
        calls = json.loads(ground_truth)
    except json.JSONDecodeError as exc:
        raise ValueError(f"tool-call ground truth is not JSON ({exc}): {ground_truth[:120]!r}") from None
    if not isinstance(calls, list):
        raise ValueError(f"tool-call ground truth must be a JSON list of calls, got {type(calls).__name__}")
    actions, inputs = [], {}
    for i, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("Action"), str):
            raise ValueError(f"tool-call ground truth item {i} needs a string 'Action': {call!r}"[:200])
        actions.append(call["Action"])
        raw = call.get("Action_Input", {})
        try:
            parsed = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            inputs.update(parsed)
    return ToolCalls(actions=actions, inputs=inputs)


def _vote_key(calls: ToolCalls) -> str | None:
    if not calls.actions and not calls.inputs:
        return None
    return f"Actions: {sorted(calls.actions)}, Inputs: {json.dumps(calls.inputs, sort_keys=True)}"


@dataclass(frozen=True, kw_only=True)
class ToolCallVerifier:
    """ReAct tool-call verifier; registered as ``"toolcall"``.

    compat_regex: parse ``Action Input:`` objects with the reference's non-greedy regex (parity runs only).
    """

    compat_regex: bool = False

    def __call__(self, completion: str, ground_truth: str, *, truncated: bool = False) -> Verdict:
        gold = parse_gold_calls(ground_truth)
        pred = parse_tool_calls(completion, compat_regex=self.compat_regex)
        actions_ok = Counter(pred.actions) == Counter(gold.actions)
        inputs_ok = pred.inputs == gold.inputs
        parts = []
        if not actions_ok:
            parts.append(f"Actions mismatch: predicted {pred.actions}, expected {gold.actions}")
        if not inputs_ok:
            parts.append(f"Action inputs mismatch: predicted {pred.inputs}, expected {gold.inputs}")
        correct = actions_ok and inputs_ok
        return Verdict(
            score=1.0 if correct else 0.0, correct=correct, pred=_vote_key(pred), feedback="; ".join(parts)
        )


VERIFIERS.add("toolcall", ToolCallVerifier)
