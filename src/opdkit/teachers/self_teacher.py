"""SDPO's self-teacher: the student, shown a successful sibling or feedback in context, is its own teacher.

Two parts (docs/algorithms.md §4.2-§4.6):

1. ``build_teacher_context`` rewrites each rollout's last user message with its demonstration and/or feedback
   (``teachers.reprompt``), renders the chat template with the generation prompt and tokenizes it, and returns
   the teacher prompts plus the self-distillation mask ``sd_mask_N``. A teacher prompt longer than
   ``max_reprompt_len`` is shortened by cutting the *demonstration* from its end, so the template's tail and
   the generation header survive (§11 A12); if even an empty demonstration does not fit, it raises.
2. ``make_teacher_weights`` gives the weights the teacher runs with: ``ema`` (θ_T ← (1−η)θ_T + ηθ_S after each
   optimizer step, fp32 copy), ``live`` (the student under no-grad), ``base`` (the frozen initial student) or
   ``trust-region`` (teacher logits = lerp(z_base, z_student, η)).

The response tokens are the student's exact ids; only the prompt changes, so the teacher's response logits
are aligned with its own prompt length (§0, §4.8).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from opdkit.core.chunked import LinearHead, TeacherHidden, lerp_teacher_hidden
from opdkit.teachers.reprompt import RepromptTemplate, plan_reprompts, reprompt_user_text, strip_thinking


def _help(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class SelfTeacherOptions:
    """Self-teacher settings (the ``self_teacher`` config section); defaults are lasgroup/SDPO's."""

    weights: str = _help(
        "ema", "self-teacher weights (§4.6): ema, live (the student), base (frozen initial), trust-region"
    )
    update_rate: float = _help(0.05, "EMA rate / trust-region lerp factor η")
    dont_reprompt_on_self_success: bool = _help(True, "never use a rollout as its own demonstration")
    include_environment_feedback: bool = _help(False, "put the verifier's feedback in the teacher context")
    feedback_only_without_solution: bool = _help(True, "use feedback only when no demonstration exists")
    remove_thinking_from_demonstration: bool = _help(True, "strip <think>...</think> from demonstrations")
    max_reprompt_len: int = _help(10240, "teacher prompt token limit; the demonstration is cut from its end")
    solution_template: str = _help("\nCorrect solution:\n\n{demonstration}", "demonstration section")
    feedback_template: str = _help(
        "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback}",
        "feedback section",
    )
    instruction: str = _help("\n\nCorrectly solve the original question.", "closing instruction")

    def __post_init__(self) -> None:
        if self.weights not in _WEIGHT_KINDS:
            raise ValueError(
                f"unknown self_teacher.weights {self.weights!r}; valid: {', '.join(_WEIGHT_KINDS)}"
            )
        if not 0.0 <= self.update_rate <= 1.0:
            raise ValueError(f"self_teacher.update_rate must be in [0, 1], got {self.update_rate}")

    def template(self) -> RepromptTemplate:
        return RepromptTemplate(self.solution_template, self.feedback_template, self.instruction)


@dataclass(frozen=True)
class RolloutTexts:
    """What the self-teacher needs to know about the step's N rollouts."""

    messages: Sequence[list[dict]]  # the original chat prompt of each row
    response_texts: Sequence[str]  # decoded responses (special tokens skipped)
    success: Sequence[bool]
    feedback: Sequence[str]
    group_ids: Sequence[int]


@dataclass(frozen=True)
class TeacherContext:
    """Tokenized teacher prompts (unpadded), the SDPO mask and logging statistics (§4.5)."""

    prompt_ids: list[list[int]]
    sd_mask_N: torch.Tensor
    stats: dict[str, float]


def _rewrite_last_user(messages: list[dict], text: str) -> list[dict]:
    out = [dict(m) for m in messages]
    for m in reversed(out):
        if m.get("role") == "user":
            m["content"] = text
            return out
    raise ValueError("a prompt has no user message to rewrite for the self-teacher")


def _last_user_text(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    raise ValueError("a prompt has no user message to rewrite for the self-teacher")


def _render(tokenizer: Any, messages: list[dict], chat_kwargs: dict) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **chat_kwargs)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _fit_demonstration(render: Callable[[str | None], list[int]], demo: str, tokenizer: Any, limit: int):
    """Cut ``demo`` from its end until the rendered prompt fits ``limit`` tokens -> (ids, was_cut)."""
    ids = render(demo)
    if len(ids) <= limit:
        return ids, False
    demo_ids = tokenizer(demo, add_special_tokens=False)["input_ids"]
    for _ in range(8):  # token counts of decoded text can shift by a few tokens; converge in a few tries
        keep = len(demo_ids) - (len(ids) - limit) - 1
        if keep <= 0:
            break
        demo_ids = demo_ids[:keep]
        ids = render(tokenizer.decode(demo_ids, skip_special_tokens=True))
        if len(ids) <= limit:
            return ids, True
    ids = render("")
    if len(ids) > limit:
        raise ValueError(
            f"the self-teacher prompt needs {len(ids)} tokens even with an empty demonstration, more than "
            f"self_teacher.max_reprompt_len={limit}"
        )
    return ids, True


def build_teacher_context(
    tokenizer: Any, rollouts: RolloutTexts, options: SelfTeacherOptions, chat_kwargs: dict | None = None
) -> TeacherContext:
    """Teacher prompts and the SDPO mask for every rollout (§4.2-§4.5); see the module docstring."""
    plan = plan_reprompts(
        rollouts.group_ids,
        rollouts.success,
        rollouts.feedback,
        dont_reprompt_on_self_success=options.dont_reprompt_on_self_success,
        include_environment_feedback=options.include_environment_feedback,
        feedback_only_without_solution=options.feedback_only_without_solution,
    )
    chat_kwargs = chat_kwargs or {}
    template = options.template()
    prompt_ids, cut = [], 0
    rendered: dict[tuple, tuple[list[int], bool]] = {}  # rows of a group mostly share prompt and sibling
    for i, messages in enumerate(rollouts.messages):
        demo = None
        if plan.demo_index[i] >= 0:
            demo = rollouts.response_texts[plan.demo_index[i]]
            demo = strip_thinking(demo) if options.remove_thinking_from_demonstration else demo
        feedback = rollouts.feedback[i] if plan.use_feedback[i] else None
        key = (json.dumps(messages, sort_keys=True, default=str), demo, feedback)
        if key not in rendered:
            rendered[key] = _teacher_prompt(
                tokenizer, (messages, demo, feedback), (template, chat_kwargs), options
            )
        ids, was_cut = rendered[key]
        if len(ids) > options.max_reprompt_len:
            raise ValueError(f"row {i}: the self-teacher prompt has {len(ids)} tokens, over max_reprompt_len")
        cut += int(was_cut)
        prompt_ids.append(list(ids))
    return TeacherContext(
        prompt_ids, torch.tensor(plan.sd_mask, dtype=torch.bool), _stats(rollouts, plan, cut)
    )


def _teacher_prompt(
    tokenizer: Any, row: tuple[list[dict], str | None, str | None], render_with: tuple, options: Any
) -> tuple[list[int], bool]:
    """One row's teacher prompt ids and whether its demonstration was cut; ``row`` = (messages, demo,
    feedback), ``render_with`` = (reprompt template, chat kwargs)."""
    messages, demo, feedback = row
    template, chat_kwargs = render_with
    prompt_text = _last_user_text(messages)

    def render(d: str | None) -> list[int]:
        text = reprompt_user_text(prompt_text, d, feedback, template)
        return _render(tokenizer, _rewrite_last_user(messages, text), chat_kwargs)

    if demo is None:
        return render(None), False
    return _fit_demonstration(render, demo, tokenizer, options.max_reprompt_len)


def _stats(rollouts: RolloutTexts, plan: Any, cut: int) -> dict[str, float]:
    n = max(1, len(plan.sd_mask))
    groups: dict[int, bool] = {}
    for g, ok in zip(rollouts.group_ids, rollouts.success):
        groups[g] = groups.get(g, False) or bool(ok)
    return {
        "success_group_fraction": sum(groups.values()) / max(1, len(groups)),
        "reprompt_fraction": sum(plan.sd_mask) / n,
        "feedback_used_fraction": sum(plan.use_feedback) / n,
        "empty_target_batch": float(not any(plan.sd_mask)),
        "truncated_demonstrations": float(cut),
    }


# ------------------------------------------------------------------------------------------ weights
# Each kind gives the teacher's logits (``logits(run, student)``, full-logit path) or its hidden states and
# head (``hidden(run, student)``, the chunked path); ``run(model)`` does the forward on the teacher context.

LogitsRun = Callable[[torch.nn.Module], torch.Tensor]
HiddenRun = Callable[[torch.nn.Module], TeacherHidden]


class TeacherWeights(Protocol):
    """The self-teacher's weights (``make_teacher_weights``): its forwards and its state."""

    def logits(self, run: LogitsRun, student: torch.nn.Module) -> torch.Tensor: ...

    def hidden(self, run: HiddenRun, student: torch.nn.Module) -> TeacherHidden: ...

    def update(self, student: torch.nn.Module) -> None: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


def _detached(view: TeacherHidden) -> TeacherHidden:
    head = view.head
    bias = None if head.bias_V is None else head.bias_V.detach()
    return TeacherHidden(view.hidden_N_T_H.detach(), LinearHead(head.weight_V_H.detach(), bias))


class _FrozenCopy:
    """A frozen copy of the initial student (``base``); also the reference of the other kinds."""

    def __init__(self, student: torch.nn.Module, rate: float) -> None:
        self.model = copy.deepcopy(student).eval().requires_grad_(False)
        self.rate = rate

    def logits(self, run: LogitsRun, student: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return run(self.model)

    def hidden(self, run: HiddenRun, student: torch.nn.Module) -> TeacherHidden:
        with torch.no_grad():
            return run(self.model)

    def update(self, student: torch.nn.Module) -> None:
        """The base teacher never changes."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


class _Ema(_FrozenCopy):
    """θ_T ← (1−η)·θ_T + η·θ_S after every optimizer step, kept in float32 (§4.6, §11 A14)."""

    def __init__(self, student: torch.nn.Module, rate: float) -> None:
        super().__init__(student, rate)
        self.model.float()

    @torch.no_grad()
    def update(self, student: torch.nn.Module) -> None:
        ema_update_(self.model.parameters(), student.parameters(), self.rate)
        for b_t, b_s in zip(self.model.buffers(), student.buffers()):
            b_t.copy_(b_s)


@torch.no_grad()
def ema_update_(
    teacher_params: Iterable[torch.Tensor], student_params: Iterable[torch.Tensor], rate: float
) -> None:
    """θ_T ← (1−η)·θ_T + η·θ_S in place, pairwise, in the teacher's dtype and device (§4.6); also used on
    sharded parameters' local pieces (the verl plugin)."""
    for p_t, p_s in zip(teacher_params, student_params, strict=True):
        p_t.lerp_(p_s.detach().to(device=p_t.device, dtype=p_t.dtype), rate)


class _Live:
    """The current student under no-grad."""

    def __init__(self, student: torch.nn.Module, rate: float) -> None:
        self.rate = rate

    def logits(self, run: LogitsRun, student: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return run(student)

    def hidden(self, run: HiddenRun, student: torch.nn.Module) -> TeacherHidden:
        with torch.no_grad():
            return _detached(run(student))  # the student's head carries requires_grad

    def update(self, student: torch.nn.Module) -> None:
        """Nothing to update: the live student is used as it is."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """No state of its own."""


class _TrustRegion(_FrozenCopy):
    """Teacher logits = lerp(z_base, z_student, η) on the teacher context (§4.6)."""

    def logits(self, run: LogitsRun, student: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return torch.lerp(run(self.model).float(), run(student).float(), self.rate)

    def hidden(self, run: HiddenRun, student: torch.nn.Module) -> TeacherHidden:
        with torch.no_grad():
            return lerp_teacher_hidden(run(self.model), _detached(run(student)), self.rate)


_WEIGHT_KINDS: dict[str, type] = {
    "ema": _Ema,
    "live": _Live,
    "base": _FrozenCopy,
    "trust-region": _TrustRegion,
}


def make_teacher_weights(student: torch.nn.Module, options: SelfTeacherOptions) -> TeacherWeights:
    """The self-teacher's weights: an object with ``logits(run, student)``, ``hidden(run, student)``,
    ``update(student)`` and ``state_dict()``/``load_state_dict()``."""
    return _WEIGHT_KINDS[options.weights](student, options.update_rate)
