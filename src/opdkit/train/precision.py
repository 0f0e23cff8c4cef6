"""Mixed precision the standard way: float32 master weights and AdamW states, low-precision compute.

``model.dtype`` names the *compute* dtype. The student's parameters, their gradients and AdamW's moments stay
in float32 whatever it is; with ``bfloat16`` or ``float16`` every forward (rollouts, old log-probs, teacher
scoring, the loss, evaluation) runs under ``torch.autocast(device_type, dtype)``, so matrix products run in
the low-precision dtype while the optimizer adds updates of size lr·m/√v (≈ 1e-5 · |θ|) to float32 weights.

Why not bfloat16 weights: bfloat16 has 8 significant bits, so an update smaller than 2⁻⁹·|θ| rounds away. At
lr 1e-5 almost every AdamW update is that small: the weights do not move (measured on a small Qwen3: 0.04 %
of the weights changed after 3 steps, against 99.6 % in float32).

``float16`` has a narrow exponent range, so its gradients are computed on a scaled loss (``LossScaler``,
``torch.amp.GradScaler``: the loss is multiplied by S before backward, the gradients divided by S before
clipping; an overflow skips the update and halves S). ``bfloat16`` has float32's exponent range and needs no
scaling. The scaler's state is saved in checkpoints, so a resumed run continues with the same S.

    with autocast("bfloat16", device):
        loss = method.loss(...)
    scaler.backward(loss); scaler.unscale(optimizer); clip...; scaler.step(lambda: optimizer.step())
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

T = TypeVar("T")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def compute_dtype(name: str) -> torch.dtype:
    """The torch dtype of a ``model.dtype`` name."""
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(_DTYPES)}")
    return _DTYPES[name]


@contextlib.contextmanager
def autocast(name: str, device: torch.device | str) -> Iterator[None]:
    """Forwards inside run in the ``name`` dtype (autocast); float32 leaves everything as it is."""
    dtype = compute_dtype(name)
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield


class LossScaler:
    """Dynamic loss scaling for float16 compute; for other dtypes every method is the plain operation.

    Call order per optimizer update: ``backward`` (each micro-batch), ``unscale`` (before clipping), then
    ``step(apply)`` or, when the update is dropped, ``skip``.
    """

    def __init__(self, name: str, device: torch.device | str) -> None:
        enabled = compute_dtype(name) == torch.float16
        self._scaler = torch.amp.GradScaler(torch.device(device).type) if enabled else None
        self._unscaled = False

    def backward(self, loss: torch.Tensor) -> None:
        (self._scaler.scale(loss) if self._scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the scale (so clipping and the norm see true gradients)."""
        if self._scaler is not None:
            self._scaler.unscale_(optimizer)
            self._unscaled = True

    def step(self, apply: Callable[[], T]) -> T:
        """Apply the update with ``apply()`` (the caller has checked the unscaled gradients are finite, which
        is the check ``GradScaler.step`` would make), then let float16's scale grow on schedule."""
        result = apply()
        self.skip()
        return result

    def skip(self) -> None:
        """End the update, applied or dropped: with float16, update the scale from ``unscale``'s overflow
        check (halved after an overflow, grown after enough clean steps)."""
        if self._scaler is not None and self._unscaled:
            self._scaler.update()
        self._unscaled = False

    def state_dict(self) -> dict[str, Any]:
        return self._scaler.state_dict() if self._scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._scaler is not None and state:
            self._scaler.load_state_dict(state)
