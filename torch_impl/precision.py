"""Precision, torch side: the float32 matmul policy (``ml_patterns.parity.PRECISIONS``) and the
context a trainer's forward pass runs in for a training precision (``ml_patterns.precision``).

``bf16-mixed`` is ``torch.autocast(device.type, dtype=torch.bfloat16)`` around the forward and
the loss, the backward outside it (as torch's AMP recipe): parameters, their gradients and the
optimizer state stay float32; which ops autocast runs in bfloat16 and which in float32 on each
device is torch's own list (docs/PRECISION.md compares it with JAX's policy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ml_patterns.errors import UsageError
from ml_patterns.parity import PRECISIONS
from ml_patterns.precision import MIXED, check_precision

# policy -> (torch.set_float32_matmul_precision, cuDNN TF32)
_MATMUL = {"float32": ("highest", False), "tf32": ("high", True)}


def set_precision(policy: str = "float32") -> None:
    """Sets the float32 matmul policy (``"float32"`` or ``"tf32"``) for the process."""
    if policy not in _MATMUL:
        raise UsageError(f"unknown precision policy {policy!r}; known: {sorted(PRECISIONS)}")
    matmul, cudnn_tf32 = _MATMUL[policy]
    torch.set_float32_matmul_precision(matmul)  # sets torch.backends.cuda.matmul.allow_tf32 with it
    torch.backends.cudnn.allow_tf32 = cudnn_tf32


@contextlib.contextmanager
def precision_policy(policy: str) -> Iterator[None]:
    """``set_precision(policy)`` for the block, the previous settings restored after it."""
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    set_precision(policy)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The context a trainer's forward pass and loss run in: bfloat16 autocast on ``device`` for
    ``bf16-mixed``, a disabled one otherwise (the backward and the optimizer step run outside it)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=check_precision(precision) == MIXED)
