"""Test-only shims that run verl 0.9.1's real FSDP2 engine (``FSDPEngineWithLMHead``) on CPU, in-process.

verl runs its engines on CUDA/NPU only. Three shims make the same engine code run on CPU with gloo:
a ``cpu`` platform (``PlatformRegistry``, selected with ``VERL_PLATFORM=cpu`` before verl resolves its
platform), the engine class registered for ``device="cpu"``, and FSDP2's CPU-offload policy without pinned
memory (pinning needs an accelerator). Eager attention and ``use_remove_padding=False`` (the packed path
needs flash-attention's varlen kernels). A single-process gloo group stands in for the data-parallel world.
"""

from __future__ import annotations

import contextlib
import os
from types import ModuleType
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry, get_platform, set_platform


class _CpuModule(ModuleType):
    """``torch.cuda``-like calls for the CPU platform: memory figures 0, everything else a no-op."""

    def __getattr__(self, name: str) -> Any:
        if name == "mem_get_info":
            return lambda *a, **k: (0, 0)
        if name.startswith(("memory_", "max_memory")):
            return lambda *a, **k: 0
        if name == "is_available":
            return lambda: False
        return lambda *a, **k: None


class PlatformCPU(PlatformBase):
    """verl platform ``cpu`` (test-only): gloo, no device module, no IPC."""

    device_name = property(lambda self: "cpu")
    vendor_name = property(lambda self: "cpu")
    device_module = property(lambda self: _CpuModule("cpu_device"))
    is_available = lambda self: True  # noqa: E731
    current_device = lambda self: "cpu"  # noqa: E731  (tensors move with .to("cpu"))
    device_count = lambda self: 1  # noqa: E731
    set_device = synchronize = set_allocator_settings = empty_cache = lambda self, *a: None
    manual_seed = manual_seed_all = lambda self, seed: torch.manual_seed(seed)
    get_device_capability = lambda self, device_index=0: (None, None)  # noqa: E731
    communication_backend_name = lambda self: "gloo"  # noqa: E731
    visible_devices_envvar = lambda self: "CUDA_VISIBLE_DEVICES"  # noqa: E731
    nvtx_range = staticmethod(lambda msg: contextlib.nullcontext())
    profiler_start = profiler_stop = lambda self: None
    ray_resource_name = lambda self: "CPU"  # noqa: E731
    ray_noset_envvars = lambda self: []  # noqa: E731
    is_ipc_supported = lambda self: False  # noqa: E731
    cudart = lambda self: None  # noqa: E731


def _register_cpu_platform() -> None:
    """Register and select the ``cpu`` platform. verl may have resolved its platform already (to "nvidia",
    its fallback): replace it, and the module global the FSDP engine captured at import."""
    if PlatformRegistry.get("cpu") is None:
        PlatformRegistry.register(platform="cpu")(PlatformCPU)
    if get_platform().device_name != "cpu":
        set_platform(PlatformCPU())
    from verl.workers.engine.fsdp import transformer_impl

    transformer_impl.device_name = "cpu"


def _init_process_group() -> None:
    if torch.distributed.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 2000))
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)


def build_cpu_engine(model_path: str, *, micro_batch: int, lr: float = 1e-3, offload: bool = False):
    """verl's ``FSDPEngineWithLMHead`` (FSDP2, fp32 params) for the HF model at ``model_path``, on CPU.
    Imported only by tests that skipped already without verl."""
    os.environ["VERL_PLATFORM"] = "cpu"
    _register_cpu_platform()
    _init_process_group()
    from verl.trainer.config.config import CheckpointConfig
    from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    with contextlib.suppress(AssertionError):
        EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device="cpu")(
            FSDPEngineWithLMHead
        )
    model_config = HFModelConfig(
        path=model_path, use_remove_padding=False, enable_gradient_checkpointing=False,
        override_config={"attn_implementation": "eager"},
    )  # fmt: skip
    engine_config = FSDPEngineConfig(
        strategy="fsdp2", param_offload=offload, optimizer_offload=offload, model_dtype="fp32",
        mixed_precision={"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"},
        use_remove_padding=False, forward_only=False,
    )  # fmt: skip
    optim_config = FSDPOptimizerConfig(lr=lr, clip_grad=1e9, weight_decay=0.0, total_training_steps=10)
    engine = EngineRegistry.new(
        model_type="language_model", backend="fsdp2", model_config=model_config, engine_config=engine_config,
        optimizer_config=optim_config, checkpoint_config=CheckpointConfig(),
    )  # fmt: skip
    engine.initialize()
    return engine


def engine_batch(
    prompts: list[list[int]],
    responses: list[list[int]],
    fields: dict[str, list[torch.Tensor]] | None = None,
    *,
    micro_batch: int,
    global_batch_size: int | None = None,
    **non_tensor: Any,
):
    """A mini-batch as verl's actor update hands it to ``engine.train_batch``: nested per-sample
    ``input_ids``/``position_ids`` (prompt ⊕ response), ``prompts``, ``responses``, ``response_mask`` and
    ``loss_mask`` (the response's, as verl's agent loop sets it), ``fields`` as nested per-sample tensors,
    and the non-tensor settings of verl's actor (temperature 1, no dynamic batch size)."""
    from verl.utils import tensordict_utils as tu

    nested = tu.nested_tensor_from_tensor_list
    seqs = [torch.tensor(p + r, dtype=torch.int64) for p, r in zip(prompts, responses)]
    tensors = {
        "input_ids": nested(seqs),
        "position_ids": nested([torch.arange(len(s)) for s in seqs]),
        "prompts": nested([torch.tensor(p, dtype=torch.int64) for p in prompts]),
        "responses": nested([torch.tensor(r, dtype=torch.int64) for r in responses]),
        "response_mask": nested([torch.ones(len(r), dtype=torch.int64) for r in responses]),
        "loss_mask": nested([torch.ones(len(r), dtype=torch.int64) for r in responses]),
    }
    tensors.update({name: nested(values) for name, values in (fields or {}).items()})
    settings = {
        "temperature": 1.0,
        "use_remove_padding": False,
        "use_dynamic_bsz": False,
        "micro_batch_size_per_gpu": micro_batch,
        "use_fused_kernels": False,
        "global_batch_size": global_batch_size or len(prompts),
        "calculate_entropy": False,
        "distillation_use_topk": True,
        "distillation_only": False,
    }
    settings.update(non_tensor)
    return tu.get_tensordict(tensor_dict=tensors, non_tensor_dict=settings)
