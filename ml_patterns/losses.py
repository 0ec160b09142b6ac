"""The losses' contract, written once for both backends: argument checks and ``CombinedLoss``.

``torch_impl.losses`` and ``jax_impl.losses`` expose the same functions:

``masked_cross_entropy(logits, targets, mask, *, label_smoothing=0.0) -> loss``
    logits ``[..., vocab]`` (usually ``[batch, seq, vocab]``), float32, bfloat16 or float16: 16-bit
    logits are computed in float32, float64 logits (torch) in float64. targets ``[...]`` integer ids.
    mask ``[...]``, bool, integer or float weights. Returns the scalar
    ``sum(nll * mask) / sum(mask)`` in the compute dtype (float32 for the usual inputs).

    - A position whose mask is 0 (``False``) is ignored whatever its target holds (``-100``, any
      out-of-range id): no error, no NaN, no effect on the value or the gradients.
    - Every position masked (``sum(mask) == 0``): the loss is 0.0 and every gradient is zero.
      torch's own ``F.cross_entropy(..., ignore_index=...)`` returns NaN there; a batch of
      padding must not poison a training run, so we define it.
    - An unmasked target outside ``[0, vocab)`` raises ``TargetOutOfRangeError`` naming the
      position, when the targets and the mask are concrete (torch always; JAX called eagerly). Under
      ``jax.jit`` values cannot be checked without a host round trip: such a position makes the loss
      NaN instead (loudly wrong, never silently wrapped: a gather would wrap ``-1`` to the last class).
    - ``label_smoothing`` in ``[0, 1]``, torch's definition: the target distribution is
      ``(1 - eps) * one_hot + eps / vocab``, i.e. per position
      ``(1 - eps) * nll + eps * mean_c(-log_softmax(logits)_c)``.
    - Mask weights are meant to be non-negative (checking would cost a host round trip).
    - Memory: no one-hot, and no second logits-sized float buffer beyond the gradient (the output):
      torch works through the rows in chunks of at most 64 MiB of float32 in the forward pass (and
      in the backward pass for 16-bit logits), and writes a float32 gradient in place in its own
      buffer; XLA fuses the JAX side's reductions and its gradient expression. Measured by
      ``bench/losses.py`` (peak RSS): about 0 bytes beyond the gradient for float32 logits, where
      ``F.cross_entropy`` takes two logits-sized buffers more. bfloat16 logits: the gradient is
      computed in float32 and rounded once, so a float32 buffer exists (one chunk on torch, the whole
      logits on XLA:CPU, which materializes ``exp(x - max)`` for bfloat16 inputs).
    - Stable for large logits: nll is computed as ``log(sum(exp(x - max))) - (x_t - max)``, whose
      rounding does not grow with the logits' magnitude (``logsumexp(x) - x_t`` loses 1e-3 at 1e4).

``masked_cross_entropy_sum(logits, targets, mask, *, label_smoothing=0.0) -> (sum, count)``
    The same, unreduced: ``sum(nll * mask)`` and ``sum(mask)``, two scalars in the compute dtype, so
    that a caller can aggregate exactly across batches (``sum(sums) / sum(counts)``, the flax WMT
    example's habit) instead of averaging means.

``masked_binary_cross_entropy_sum(logits, targets, weights) -> (sum, count)``
    Binary cross-entropy on logits (torch's ``binary_cross_entropy_with_logits``, optax's
    ``sigmoid_binary_cross_entropy``): ``logits``, ``targets`` (0./1., any dtype) and ``weights``
    (bool or float) of one shape (usually ``[batch]``); returns ``sum(bce * weights)`` and
    ``sum(weights)`` in the compute dtype (float32 for 16-bit logits). A position of weight 0 is
    ignored whatever its target holds (no NaN, no gradient).

``CombinedLoss(losses, weights=None)``
    The seed's weighted sum of named losses: ``total = sum(weights[name] * losses[name](prediction,
    target))``.

    - ``losses``: name -> ``fn(prediction, target) -> scalar``, a plain function or a module of the
      backend (torch ``nn.Module``, NNX ``nnx.Module``), which may hold parameters. A loss needing
      several target arrays takes them as one value, e.g.
      ``lambda logits, t: masked_cross_entropy(logits, *t)`` with the target ``(ids, mask)``.
    - ``weights``: name -> Python number; a name left out weighs 1.0.

    Calling it with ``predictions`` and ``targets``, two mappings holding (at least) every loss
    name, returns ``(total, {name: unweighted value})``, in the order of ``losses``.

    It is a module on each backend (torch's ``nn.Module`` over an ``nn.ModuleDict``; on JAX an
    ``nnx.Module`` over an ``nnx.Dict``), so a loss with parameters is part of its model: trained
    by the optimizer over the model's parameters, saved and loaded with it. Both are thin shells
    over ``check_losses`` (arguments) and ``combine`` (the call), which do plain arithmetic on what
    the losses return, so the JAX one is a pure function of its state and inputs inside ``jax.jit``.

    Raises ``ValueError`` for no loss, a weight for a name that is not a loss, or a weight that is
    not a finite number; ``TypeError`` for a loss that is not callable; ``KeyError`` (when called)
    for a prediction or target missing for a loss, naming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# Kinds of dtypes, as the backends classify them (numpy's ``dtype.kind`` letters).
FLOAT, INT, BOOL = "f", "i", "b"


class TargetOutOfRangeError(ValueError):
    """An unmasked target id lies outside ``[0, vocab)``."""


def check_cross_entropy_args(
    logits_shape: Sequence[int],
    targets_shape: Sequence[int],
    mask_shape: Sequence[int],
    *,
    logits_kind: str,
    targets_kind: str,
    mask_kind: str,
    label_smoothing: float,
) -> int:
    """Validates shapes, dtype kinds and ``label_smoothing``; returns the vocabulary size.

    Raises ``ValueError`` naming the shapes (or dtypes) that disagree.
    """
    logits_shape, targets_shape, mask_shape = tuple(logits_shape), tuple(targets_shape), tuple(mask_shape)
    if len(logits_shape) < 2:
        raise ValueError(f"logits must be [..., vocab] with at least 2 dimensions, got shape {logits_shape}")
    if logits_shape[:-1] != targets_shape:
        raise ValueError(
            f"targets shape {targets_shape} must equal the logits shape without its vocab axis: "
            f"logits shape {logits_shape} -> {logits_shape[:-1]}"
        )
    if mask_shape != targets_shape:
        raise ValueError(f"mask shape {mask_shape} must equal targets shape {targets_shape}")
    if logits_shape[-1] < 1:
        raise ValueError(f"logits shape {logits_shape} has an empty vocab axis")
    if logits_kind != FLOAT:
        raise ValueError(f"logits must be floating point, got dtype kind {logits_kind!r}")
    if targets_kind != INT:
        raise ValueError(f"targets must be integer class ids, got dtype kind {targets_kind!r}")
    if mask_kind not in (BOOL, INT, FLOAT):
        raise ValueError(f"mask must be bool, integer or float weights, got dtype kind {mask_kind!r}")
    check_label_smoothing(label_smoothing)
    return logits_shape[-1]


def check_binary_cross_entropy_args(
    logits_shape: Sequence[int], targets_shape: Sequence[int], weights_shape: Sequence[int], logits_kind: str
) -> None:
    """Raises ``ValueError`` unless the three shapes are equal and the logits floating point."""
    shapes = tuple(logits_shape), tuple(targets_shape), tuple(weights_shape)
    if not shapes[0] == shapes[1] == shapes[2]:
        raise ValueError(f"logits {shapes[0]}, targets {shapes[1]} and weights {shapes[2]} must have one shape")
    if logits_kind != FLOAT:
        raise ValueError(f"logits must be floating point, got dtype kind {logits_kind!r}")


def check_label_smoothing(label_smoothing: float) -> None:
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)):
        raise TypeError(f"label_smoothing must be a Python number, got {type(label_smoothing).__name__}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing}")


def target_out_of_range(position: Sequence[int], value: int, vocab: int, n_bad: int) -> TargetOutOfRangeError:
    """The error for the first unmasked target outside ``[0, vocab)`` (``n_bad`` of them in all)."""
    where = ", ".join(str(int(i)) for i in position)
    return TargetOutOfRangeError(
        f"targets[{where}] = {int(value)} is outside [0, {vocab}) at an unmasked position "
        f"({n_bad} such position(s)); mask it out or fix the target"
    )


def check_losses(losses: Mapping[str, Any], weights: Mapping[str, float] | None) -> dict[str, float]:
    """Validates ``CombinedLoss``'s arguments; returns ``{name: weight}`` for every loss, in order."""
    if not losses:
        raise ValueError("CombinedLoss needs at least one loss")
    for name, fn in losses.items():
        if not callable(fn):
            raise TypeError(f"loss {name!r} is not callable: {fn!r}")
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(losses))
    if unknown:
        raise ValueError(f"weights given for unknown loss name(s) {unknown}; losses are {list(losses)}")
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"weight of loss {name!r} must be a finite Python number, got {weight!r}")
    return {name: float(weights.get(name, 1.0)) for name in losses}


def combine(
    losses: Mapping[str, Callable[[Any, Any], Any]],
    weights: Mapping[str, float],
    predictions: Mapping[str, Any],
    targets: Mapping[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """``(weighted_sum(values, weights), values)`` with ``values[name] = losses[name](predictions[name],
    targets[name])``; a missing prediction or target raises ``KeyError`` naming it."""
    for kind, given in (("prediction", predictions), ("target", targets)):
        missing = [name for name in losses if name not in given]
        if missing:
            raise KeyError(f"{kind} missing for loss(es) {missing}; {kind}s given: {sorted(given)}")
    values = {name: fn(predictions[name], targets[name]) for name, fn in losses.items()}
    return weighted_sum(values, weights), values


def weighted_sum(values: Mapping[str, Any], weights: Mapping[str, float]) -> Any:
    """``sum(weights[name] * values[name])`` in the order of ``values``: plain arithmetic, so it works
    on tensors, arrays and tracers alike."""
    terms = [weights[name] * value for name, value in values.items()]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total
