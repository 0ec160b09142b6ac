"""Precision, JAX side; the contract: ``torch_impl.precision``.

Divergences, and why:

- JAX has no autocast: ``bf16-mixed`` is a policy the trainer applies to the model inside its
  jitted loss (``models.functional(model, compute_dtype=jnp.bfloat16)``): every layer that torch's
  autocast runs in bfloat16 and that Flax builds with a computation ``dtype`` (``nnx.Linear``,
  ``LinearGeneral``, ``Einsum``, ``Conv``, ``ConvTranspose``) gets ``dtype=bfloat16``: it casts its
  input and its float32 parameters to bfloat16 and returns bfloat16, as ``autocast`` does with
  ``linear``/``conv``. Everything else follows JAX's type promotion, which keeps float32 where torch
  does: a bfloat16 activation added to the float32 residual stream is float32, a layer norm of a
  float32 input is float32, and the losses and attention's softmax upcast bfloat16 inputs to float32
  (``losses``, ``molecules.models.reference_attention``). Gradients reach the float32 parameters
  through the casts in float32. A model's own ``jnp.matmul`` of two float32 arrays stays float32:
  the policy sees modules, not operations (docs/PRECISION.md).
- ``set_precision`` sets ``jax_default_matmul_precision``; the trainers' steps trace under
  ``jax.default_matmul_precision`` so that a trainer's policy is part of its compiled program.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from ml_patterns.errors import UsageError
from ml_patterns.parity import PRECISIONS
from ml_patterns.precision import MIXED, check_precision

_MATMUL = {"float32": "highest", "tf32": "tensorfloat32"}

# The Flax layers with a computation dtype whose torch twins autocast runs in bfloat16.
AUTOCAST_LAYERS = (nnx.Linear, nnx.LinearGeneral, nnx.Einsum, nnx.Conv, nnx.ConvTranspose)


def set_precision(policy: str = "float32") -> None:
    if policy not in _MATMUL:
        raise UsageError(f"unknown precision policy {policy!r}; known: {sorted(PRECISIONS)}")
    jax.config.update("jax_default_matmul_precision", _MATMUL[policy])


@contextlib.contextmanager
def precision_policy(policy: str) -> Iterator[None]:
    saved = jax.config.jax_default_matmul_precision
    set_precision(policy)
    try:
        yield
    finally:
        jax.config.update("jax_default_matmul_precision", saved)


def matmul_precision(precision: str) -> str:
    """The ``jax.default_matmul_precision`` name a training precision traces its steps under."""
    return "tensorfloat32" if check_precision(precision) == "tf32" else "highest"


def compute_dtype(precision: str) -> jnp.dtype | None:
    """The dtype the autocast layers compute in under ``precision``: bfloat16 for ``bf16-mixed``,
    None (the parameters' own, float32) otherwise."""
    return jnp.bfloat16 if check_precision(precision) == MIXED else None


def autocast(model: nnx.Module, dtype: jnp.dtype) -> nnx.Module:
    """Sets ``dtype`` as the computation dtype of every ``AUTOCAST_LAYERS`` module of ``model`` (in
    place; the trainers apply it to the copy they trace, never to the user's model)."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, AUTOCAST_LAYERS):
            module.dtype = dtype
    return model
