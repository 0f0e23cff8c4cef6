"""The self-teacher's weights on verl's workers: ``ema`` (default), ``base`` and ``live`` (§4.6).

In verl's ``actor_rollout_ref`` role the actor and the reference model live in the same worker process, both
FSDP2-sharded the same way over the same ranks; the reference model is kept in float32
(``trainer/config/engine/fsdp.yaml``: ``model_dtype: fp32``) and usually CPU-offloaded. The plugin uses
that reference model as the self-teacher:

- ``ema``: after each optimizer step θ_T ← (1−η)·θ_T + η·θ_S on every rank's local shards
  (``opdkit.teachers.self_teacher.ema_update_``, η = 0.05 by default), in the teacher's float32 and on its
  device: each rank blends only the shard it holds, so no parameter is gathered;
- ``base``: the reference model, never updated (the frozen initial student);
- ``live``: the actor's own module under no-grad (no reference model needed for the teacher).

verl checkpoints only the actor, so the EMA teacher's shards are saved next to it
(``teacher_shard_path``: one file per rank) and loaded on resume; without them a resumed run would silently
restart from the initial student. No verl import: torch and opdkit.teachers only.
"""

from __future__ import annotations

import os

import torch

from opdkit.teachers.self_teacher import ema_update_

TEACHER_MODES = ("ema", "base", "live")


def check_teacher_mode(mode: str) -> str:
    if mode not in TEACHER_MODES:
        raise ValueError(f"unknown self-teacher mode {mode!r}; valid: {', '.join(TEACHER_MODES)}")
    return mode


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The piece of an FSDP2 (DTensor) parameter this rank holds; a plain tensor as it is."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _local_params(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(name, _local(p.data)) for name, p in module.named_parameters()]


@torch.no_grad()
def ema_step_(teacher: torch.nn.Module, student: torch.nn.Module, rate: float) -> None:
    """One EMA step on this rank's shards; the two modules must list the same parameters in the same order
    (the same model class sharded alike: verl's actor and ref)."""
    t_params, s_params = _local_params(teacher), _local_params(student)
    names_t, names_s = [n for n, _ in t_params], [n for n, _ in s_params]
    if names_t != names_s:
        raise ValueError("the EMA teacher and the student have different parameters")
    for (_, t), (_, s) in zip(t_params, s_params):
        if t.shape != s.shape:
            raise ValueError(f"EMA shard shapes differ ({tuple(t.shape)} vs {tuple(s.shape)}): shard alike")
    ema_update_((t for _, t in t_params), (s for _, s in s_params), rate)


def teacher_shard_path(checkpoint_dir: str, rank: int) -> str:
    """Where rank ``rank`` keeps its EMA teacher shard inside a verl checkpoint folder (the actor's)."""
    return os.path.join(checkpoint_dir, f"opdkit_ema_teacher_rank{rank}.pt")


def save_teacher_shard(teacher: torch.nn.Module, path: str) -> None:
    """This rank's teacher shards (float32 as held) -> ``path``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save({name: t.detach().cpu().clone() for name, t in _local_params(teacher)}, path)


@torch.no_grad()
def load_teacher_shard(teacher: torch.nn.Module, path: str) -> None:
    """Restore this rank's teacher shards from ``path`` (written by ``save_teacher_shard``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    params = dict(_local_params(teacher))
    if set(state) != set(params):
        raise ValueError(f"{path}: the saved EMA teacher does not match this model's parameters")
    for name, t in params.items():
        if state[name].shape != t.shape:
            raise ValueError(
                f"{path}: shard {name} has shape {tuple(state[name].shape)}, not {tuple(t.shape)}"
            )
        t.copy_(state[name].to(device=t.device, dtype=t.dtype))
