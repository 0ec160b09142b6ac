"""The training precisions both trainers take (``Trainer(precision=...)``, ``train(precision=...)``).

- ``"float32"`` (default): every op in float32, matmuls in full float32 (TF32 off on GPUs).
- ``"tf32"``: float32 weights and activations, matmuls (and torch's convolutions) in TF32 on GPUs
  that have it; on a CPU it computes exactly what ``"float32"`` does.
- ``"bf16-mixed"``: float32 master weights, gradients and optimizer state; the forward and backward
  of matmuls and linear layers in bfloat16; softmax statistics, layer norms, losses and reductions
  in float32. torch: ``torch.autocast(device_type, dtype=torch.bfloat16)``; JAX has no autocast,
  so the trainer applies the same policy to the model (``jax_impl.precision``). The op-by-op
  policy of each side: docs/PRECISION.md.

``"bf16"`` (weights and optimizer state in bfloat16 as well) is refused: an Adam update smaller
than half a bfloat16 ulp of its weight (2^-9 of it) rounds away, so pure-bf16 training needs
stochastic rounding or Kahan-compensated updates, which neither optimizer here does, and a
checkpoint would no longer hold float32 master weights.
"""

from __future__ import annotations

from ml_patterns.errors import UsageError

TRAINING_PRECISIONS = {
    "float32": "float32 everywhere, full float32 matmuls",
    "tf32": "float32 weights and activations, TF32 matmuls on GPUs that have it (on a CPU: float32)",
    "bf16-mixed": "float32 master weights and optimizer state, bfloat16 matmuls (autocast policy)",
}
MIXED = "bf16-mixed"

_PURE_BF16 = (
    "precision 'bf16' (bfloat16 weights and optimizer state) is not offered: an optimizer update below "
    "half a bfloat16 ulp of its weight (2^-9 of it) is rounded away, and neither backend's optimizer "
    "compensates (stochastic rounding, Kahan sums); use 'bf16-mixed' (float32 master weights, bfloat16 compute)"
)


def check_precision(precision: str) -> str:
    """``precision`` if it is one of ``TRAINING_PRECISIONS``; a ``UsageError`` naming the known ones otherwise."""
    if precision == "bf16":
        raise UsageError(_PURE_BF16)
    if precision not in TRAINING_PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}: use one of {', '.join(TRAINING_PRECISIONS)}")
    return precision


def matmul_policy(precision: str) -> str:
    """The float32 matmul policy (``ml_patterns.parity.PRECISIONS``) a training precision runs under:
    ``"tf32"`` for ``"tf32"``, else ``"float32"`` (bf16-mixed keeps its float32 ops full float32)."""
    return "tf32" if check_precision(precision) == "tf32" else "float32"
