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


def _register_cpu_platform() -> None:
    from verl.plugin.platform.platform_base import PlatformBase
    from verl.plugin.platform.platform_manager import PlatformRegistry, get_platform, set_platform

    if PlatformRegistry.get("cpu") is not None:
        if get_platform().device_name != "cpu":
            set_platform(PlatformRegistry.get("cpu")())
        return

    class _CpuModule(ModuleType):
        def __getattr__(self, name: str) -> Any:  # torch.cuda-like calls: memory figures 0, others no-ops
            if name == "mem_get_info":
                return lambda *a, **k: (0, 0)
            if name.startswith(("memory_", "max_memory")):
                return lambda *a, **k: 0
            if name == "is_available":
                return lambda: False
            return lambda *a, **k: None

    @PlatformRegistry.register(platform="cpu")
    class PlatformCPU(PlatformBase):
        @property
        def device_name(self) -> str:
            return "cpu"

        @property
        def vendor_name(self) -> str:
            return "cpu"

        @property
        def device_module(self) -> ModuleType:
            return _CpuModule("cpu_device")

        def is_available(self) -> bool:
            return True

        def current_device(self):
            return "cpu"

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index) -> None:
            pass

        def synchronize(self, device_index=None) -> None:
            pass

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            pass

        def empty_cache(self) -> None:
            pass

        def get_device_capability(self, device_index: int = 0):
            return (None, None)

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return "CUDA_VISIBLE_DEVICES"

        @contextlib.contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            pass

        def profiler_stop(self) -> None:
            pass

        def ray_resource_name(self) -> str:
            return "CPU"

        def ray_noset_envvars(self) -> list[str]:
            return []

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self) -> Any:
            return None

    # verl may have resolved its platform already (to "nvidia", its fallback): replace it, and the module
    # global the FSDP engine captured at import
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
    """verl's ``FSDPEngineWithLMHead`` (FSDP2, fp32 params) for the HF model at ``model_path``, on CPU."""
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
