"""Test kit for the verl plugin tests: verl's composed configs and packed micro-batches as its engine
builds them.

Not a conftest.py: other test directories import their own ``conftest`` by name. verl is imported inside
the helpers only: in opdkit's main environment (no verl) the test modules skip with
``pytest.importorskip("verl")`` before calling any of them.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import pytest
import torch

torch.set_num_threads(1)


@functools.lru_cache(maxsize=16)
def composed_config(overrides: tuple[str, ...] = ()):
    """verl 0.9.1's ``ppo_trainer`` Hydra config with ``overrides`` (exactly what ``main_ppo`` composes)."""
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose("ppo_trainer", overrides=list(overrides))


#: What any actor config needs to instantiate (verl asserts a micro-batch size without dynamic batching).
ACTOR_BASE = ("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",)


def actor_and_distillation_configs(overrides: tuple[str, ...]):
    """(ActorConfig, DistillationConfig) as verl's actor worker builds them from the composed config."""
    from verl.utils.config import omega_conf_to_dataclass

    cfg = composed_config(ACTOR_BASE + tuple(overrides))
    return omega_conf_to_dataclass(cfg.actor_rollout_ref.actor), omega_conf_to_dataclass(cfg.distillation)


@dataclass
class StepValues:
    """Padded (N, L) tensors of one step: ``logp_N_T`` is the leaf gradient tests differentiate."""

    prompt_lens: list[int]
    response_lens: list[int]
    logp_N_T: torch.Tensor
    old_logp_N_T: torch.Tensor
    teacher_logp_N_T: torch.Tensor
    prompt_logp: list[torch.Tensor]

    @property
    def mask_N_T(self) -> torch.Tensor:
        width = self.logp_N_T.shape[1]
        return torch.arange(width).unsqueeze(0) < torch.tensor(self.response_lens).unsqueeze(-1)


def random_step_values(prompt_lens: list[int], response_lens: list[int], *, seed: int = 0) -> StepValues:
    """Random student, old-student and teacher log-probs for sequences of the given lengths."""
    gen = torch.Generator().manual_seed(seed)
    b, width = len(prompt_lens), max(response_lens)
    logp_N_T = (-torch.rand(b, width, generator=gen) * 3).requires_grad_(True)
    old_logp_N_T = (logp_N_T.detach() + 0.3 * torch.randn(b, width, generator=gen)).clamp(max=0)
    return StepValues(
        prompt_lens=list(prompt_lens),
        response_lens=list(response_lens),
        logp_N_T=logp_N_T,
        old_logp_N_T=old_logp_N_T,
        teacher_logp_N_T=-torch.rand(b, width, generator=gen) * 3,
        prompt_logp=[-torch.rand(p, generator=gen) for p in prompt_lens],
    )


@dataclass
class PackedBatch:
    """A micro-batch in verl's no-padding layout: ``data`` (the TensorDict verl hands a loss: nested
    per-sample tensors plus dp_size / batch_num_tokens / global_batch_size) and ``model_output``
    ({"log_probs": nested (b, P_i + R_i)}, shifted left by one as verl's model output is)."""

    data: object
    model_output: dict


def _full_sequence(prompt_len: int, response: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """(P + R, ...) with response values at P-1 .. P+R-2 (model outputs predict the NEXT token)."""
    return torch.cat([fill[: prompt_len - 1], response, fill[prompt_len - 1 : prompt_len]], dim=0)


def packed_batch(
    step: StepValues,
    rows: list[int] | None = None,
    per_token_fields: dict[str, torch.Tensor] | None = None,
    *,
    batch_num_tokens: int | None = None,
    global_batch_size: int | None = None,
) -> PackedBatch:
    """The micro-batch of ``rows`` (default all); ``per_token_fields`` are (N, L) padded tensors stored as
    nested response fields, as the opdkit_sync trainer writes them. ``batch_num_tokens`` and
    ``global_batch_size`` default to this micro-batch's own (verl passes the whole mini-batch's)."""
    from verl.utils import tensordict_utils as tu

    rows = list(range(len(step.prompt_lens))) if rows is None else rows
    plens, rlens = [step.prompt_lens[i] for i in rows], [step.response_lens[i] for i in rows]
    nested = tu.nested_tensor_from_tensor_list
    gen = torch.Generator().manual_seed(sum(rows))

    def response(values_N_T: torch.Tensor) -> torch.Tensor:
        return nested([values_N_T[i, : step.response_lens[i]].to(torch.float32) for i in rows])

    def full(values_N_T: torch.Tensor) -> list[torch.Tensor]:
        return [
            _full_sequence(p, values_N_T[i, :r], step.prompt_logp[i]) for i, p, r in zip(rows, plens, rlens)
        ]

    tensors = {
        "prompts": nested([torch.randint(0, 50, (p,), generator=gen) for p in plens]),
        "responses": nested([torch.randint(0, 50, (r,), generator=gen) for r in rlens]),
        "response_mask": nested([torch.ones(r, dtype=torch.int64) for r in rlens]),
        "old_log_probs": response(step.old_logp_N_T),
        "teacher_logprobs": nested([t.unsqueeze(-1) for t in full(step.teacher_logp_N_T)], ragged_idx=1),
    }
    tensors.update({name: response(values) for name, values in (per_token_fields or {}).items()})
    non_tensor = {
        "dp_size": 1,
        "batch_num_tokens": int(sum(rlens)) if batch_num_tokens is None else batch_num_tokens,
        "global_batch_size": len(rows) if global_batch_size is None else global_batch_size,
    }
    data = tu.get_tensordict(tensor_dict=tensors, non_tensor_dict=non_tensor)
    log_probs = torch.nested.as_nested_tensor(full(step.logp_N_T), layout=torch.jagged)
    return PackedBatch(data=data, model_output={"log_probs": log_probs})


def broadcast_N_T(values_N: torch.Tensor, width: int) -> torch.Tensor:
    """A per-sequence value repeated over ``width`` token positions -> (N, width)."""
    return values_N.to(torch.float32).unsqueeze(-1).expand(-1, width).clone()


@pytest.fixture(scope="session")
def verl_plugin():
    """The opdkit plugin, loaded by ``import verl`` through its entry point (fails if it was not)."""
    import sys

    import verl  # noqa: F401  (entry-point discovery happens here)

    if "opdkit.integrations.verl.plugin" not in sys.modules:
        pytest.fail("importing verl did not load the opdkit plugin: is opdkit installed (pip install -e .)?")
    return sys.modules["opdkit.integrations.verl.plugin"]
