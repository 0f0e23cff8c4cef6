"""The key/value-cache token budget of sampling: configured, or derived from the device's free memory.

Budget = ``fraction`` × free bytes / cache bytes per token (``core.memory``: 2·layers·kv_heads·head_dim·b,
b the bytes of the cache's dtype). Free memory is ``torch.cuda.mem_get_info`` on a GPU and the available
physical memory on a CPU (Linux ``sysconf``; no limit where it cannot be read). The fraction leaves room
for the forward's own activations and the logits of the rows being decoded.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from opdkit.core.memory import dims_from_config


def free_device_bytes(device: torch.device) -> int:
    """Free memory of ``device`` in bytes (0 when unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def cache_token_budget(model: Any, configured: int, dtype: torch.dtype, *, fraction: float = 0.5) -> int:
    """``configured`` when > 0, else ``fraction`` of the free device memory in cache tokens (0 = no limit,
    when the free memory or the model's dimensions are unknown)."""
    if configured > 0:
        return configured
    try:
        per_token = dims_from_config(model.config).kv_bytes_per_token(torch.finfo(dtype).bits // 8)
    except (AttributeError, TypeError, ValueError):
        return 0
    free = free_device_bytes(next(model.parameters()).device)
    return max(1, int(fraction * free) // per_token) if free else 0
