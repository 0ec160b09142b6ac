"""Losses, JAX side. The contract (shapes, dtypes, masking, all-masked, errors, CombinedLoss):
``ml_patterns.losses``.

Divergences from ``torch_impl.losses``, and why:

- Out-of-range targets are checked only when ``targets`` and ``mask`` are concrete (an eager call).
  Under ``jax.jit`` they are tracers; an unmasked target outside ``[0, vocab)`` then makes the loss
  NaN (its gradients stay finite), where a plain gather would wrap ``-1`` to the last class.
- The gradient is a ``jax.custom_vjp`` whose backward pass is one fused elementwise expression
  (softmax, minus the target's share picked by comparing an iota with the target): XLA writes it
  straight into the output buffer, with no one-hot and no scatter.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ml_patterns import losses as core
from ml_patterns.losses import TargetOutOfRangeError

__all__ = [
    "CombinedLoss",
    "TargetOutOfRangeError",
    "masked_binary_cross_entropy_sum",
    "masked_cross_entropy",
    "masked_cross_entropy_sum",
]


class CombinedLoss(nnx.Module):
    """The seed's combined loss (contract: ``ml_patterns.losses``), the twin of torch's ``nn.Module``:
    an ``nnx.Module`` whose losses live in an ``nnx.Dict`` (``self.losses``), so a loss that is an
    ``nnx.Module`` with parameters is part of ``nnx.state`` of the model holding it (trained, saved
    and loaded with it). A plain function is a static entry of the dict."""

    def __init__(self, losses: Mapping[str, nnx.Module | Callable], weights: Mapping[str, float] | None = None):
        weights = core.check_losses(losses, weights)
        self.losses = nnx.Dict(losses)
        # Static, and a tuple because a dict is unhashable: the graphdef of the model holding this
        # loss must hash (the trainers key their compiled steps on it). It also keeps the order of
        # ``losses``, which the graph does not (it stores the dict's entries sorted by name).
        self._weights = tuple(weights.items())

    @property
    def weights(self) -> dict[str, float]:
        """``{name: weight}`` for every loss, in the order given."""
        return dict(self._weights)

    def __call__(self, predictions: Mapping[str, Any], targets: Mapping[str, Any]) -> tuple[jax.Array, dict]:
        losses = {name: self.losses[name] for name, _ in self._weights}
        return core.combine(losses, self.weights, predictions, targets)


def masked_cross_entropy(
    logits: jax.Array, targets: jax.Array, mask: jax.Array, *, label_smoothing: float = 0.0
) -> jax.Array:
    """``sum(nll * mask) / sum(mask)``, a scalar; 0.0 when every position is masked."""
    total, count = masked_cross_entropy_sum(logits, targets, mask, label_smoothing=label_smoothing)
    # Dividing by 1 where count == 0 gives 0.0 (total is then exactly 0) and zero gradients.
    return total / jnp.where(count > 0, count, jnp.ones_like(count))


def masked_cross_entropy_sum(
    logits: jax.Array, targets: jax.Array, mask: jax.Array, *, label_smoothing: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """``(sum(nll * mask), sum(mask))``, two scalars, for exact aggregation across batches."""
    # Concrete targets are checked as given, before jnp.asarray could wrap an int64 id into int32.
    concrete = not isinstance(targets, jax.core.Tracer) and not isinstance(mask, jax.core.Tracer)
    host_targets, host_mask = (np.asarray(targets), np.asarray(mask)) if concrete else (None, None)
    logits, targets, mask = jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask)
    vocab = core.check_cross_entropy_args(
        logits.shape,
        targets.shape,
        mask.shape,
        logits_kind=_kind(logits.dtype),
        targets_kind=_kind(targets.dtype),
        mask_kind=_kind(mask.dtype),
        label_smoothing=label_smoothing,
    )
    if concrete:
        _check_targets(host_targets, host_mask != 0, vocab)
    # 16-bit floats are computed in float32 (explicitly: strict dtype promotion has no bf16 -> f32 path).
    compute_dtype = jnp.float32 if jnp.finfo(logits.dtype).bits < 32 else logits.dtype
    weights = mask.astype(compute_dtype)
    active = weights != 0
    in_range = (targets >= 0) & (targets < vocab)
    safe_targets = jnp.where(active & in_range, targets, 0).astype(jnp.int32)
    total = _masked_nll_sum(logits, safe_targets, weights, float(label_smoothing))
    # Only reachable under jit (eager calls raised above): NaN, not a silently wrong class.
    total = total + jnp.where(active & ~in_range, jnp.nan, 0.0).astype(compute_dtype).sum()
    return total, weights.sum()


def masked_binary_cross_entropy_sum(
    logits: jax.Array, targets: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(sum(bce * weights), sum(weights))``: optax's ``sigmoid_binary_cross_entropy`` per element."""
    logits, targets, weights = jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights)
    core.check_binary_cross_entropy_args(logits.shape, targets.shape, weights.shape, _kind(logits.dtype))
    compute_dtype = jnp.float32 if jnp.finfo(logits.dtype).bits < 32 else logits.dtype
    weights = weights.astype(compute_dtype)
    targets = jnp.where(weights != 0, targets.astype(compute_dtype), jnp.zeros((), compute_dtype))
    losses = optax.sigmoid_binary_cross_entropy(logits.astype(compute_dtype), targets)
    return (losses * weights).sum(), weights.sum()


def _check_targets(targets: np.ndarray, active: np.ndarray, vocab: int) -> None:
    bad = active & ((targets < 0) | (targets >= vocab))
    if bad.any():
        positions = np.argwhere(bad)
        raise core.target_out_of_range(tuple(positions[0]), targets[tuple(positions[0])], vocab, len(positions))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _masked_nll_sum(logits, targets, weights, smoothing):
    """``sum(weights * loss)`` with loss ``(1 - eps) * nll + eps * mean_c(-log p_c)`` per position."""
    return _forward(logits, targets, weights, smoothing)[0]


def _forward(logits, targets, weights, smoothing):
    # nll = log(sum(exp(x - max))) - (x_t - max): x - max is exact, so the rounding does not grow
    # with the logits' magnitude (logsumexp(x) - x_t loses 1e-3 at 1e4). XLA fuses the shift into
    # both reductions: no logits-sized temporary.
    maxes = jax.lax.stop_gradient(logits.max(-1, keepdims=True)).astype(weights.dtype)
    shifted = logits.astype(weights.dtype) - maxes
    sums = jnp.exp(shifted).sum(-1)
    log_sums = jnp.log(sums)
    # Gathering from the logits themselves (not from ``shifted``) keeps ``shifted`` unmaterialized.
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0].astype(weights.dtype) - maxes[..., 0]
    loss = log_sums - picked
    if smoothing:
        loss = (1.0 - smoothing) * loss + smoothing * (log_sums - shifted.mean(-1))
    return (weights * loss).sum(), (logits, targets, weights, maxes, sums, loss)


def _forward_rule(logits, targets, weights, smoothing):
    return _forward(logits, targets, weights, smoothing)


def _backward_rule(smoothing, residuals, grad_total):
    logits, targets, weights, maxes, sums, loss = residuals
    coef = (grad_total * weights)[..., None]  # d total / d loss, per position
    # d loss / d logits = softmax - (1 - eps) * one_hot - eps / vocab; the one-hot is a comparison
    # with an iota inside the fused expression, never an array.
    is_target = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1) == targets[..., None]
    softmax = jnp.exp(logits.astype(weights.dtype) - maxes) * (coef / sums[..., None])
    grad = softmax - jnp.where(is_target, (1.0 - smoothing) * coef, 0.0)
    if smoothing:
        grad = grad - (smoothing / logits.shape[-1]) * coef
    # Masked positions (weight 0) hold an arbitrary target; their derivative is defined as 0.
    grad_weights = jnp.where(weights != 0, grad_total * loss, 0.0)
    # Integer targets take a float0 cotangent.
    grad_targets = np.zeros(targets.shape, dtype=jax.dtypes.float0)
    return grad.astype(logits.dtype), grad_targets, grad_weights


_masked_nll_sum.defvjp(_forward_rule, _backward_rule)


def _kind(dtype) -> str:
    if dtype == jnp.bool_:
        return core.BOOL
    if jnp.issubdtype(dtype, jnp.floating):
        return core.FLOAT
    if jnp.issubdtype(dtype, jnp.integer):
        return core.INT
    return np.dtype(dtype).kind
