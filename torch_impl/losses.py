"""Losses, torch side. The contract (shapes, dtypes, masking, all-masked, errors): ``ml_patterns.losses``.

The gradient is written by hand (``_MaskedNLLSum``) rather than left to autograd through
``log_softmax`` + ``gather``: autograd would keep the log-probabilities alive until the backward
pass and then allocate a zero-filled one-hot gradient beside the softmax one (three logits-sized
buffers at the peak, as ``F.cross_entropy`` does); here the forward pass holds one logits-sized
temporary and the backward pass builds the gradient in place in its own output buffer.
"""

from __future__ import annotations

import torch

from ml_patterns import losses as core
from ml_patterns.losses import CombinedLoss, TargetOutOfRangeError

__all__ = ["CombinedLoss", "TargetOutOfRangeError", "masked_cross_entropy", "masked_cross_entropy_sum"]


def masked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *, label_smoothing: float = 0.0
) -> torch.Tensor:
    """``sum(nll * mask) / sum(mask)``, a scalar; 0.0 when every position is masked."""
    total, count = masked_cross_entropy_sum(logits, targets, mask, label_smoothing=label_smoothing)
    # Dividing by 1 where count == 0 gives 0.0 (total is then exactly 0) and zero gradients.
    return total / torch.where(count > 0, count, torch.ones_like(count))


def masked_cross_entropy_sum(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum(nll * mask), sum(mask))``, two scalars, for exact aggregation across batches."""
    vocab = core.check_cross_entropy_args(
        logits.shape,
        targets.shape,
        mask.shape,
        logits_kind=_kind(logits.dtype),
        targets_kind=_kind(targets.dtype),
        mask_kind=_kind(mask.dtype),
        label_smoothing=label_smoothing,
    )
    compute_dtype = torch.float32 if torch.finfo(logits.dtype).bits < 32 else logits.dtype
    weights = mask.to(compute_dtype)
    active = weights != 0
    _check_targets(targets, active, vocab)
    safe_targets = torch.where(active, targets, torch.zeros_like(targets)).long()
    total = _MaskedNLLSum.apply(logits, safe_targets, weights, float(label_smoothing))
    return total, weights.sum()


def _check_targets(targets: torch.Tensor, active: torch.Tensor, vocab: int) -> None:
    # ``bool(bad.any())`` is a host sync on an accelerator: the price of a clear error instead of
    # a device-side assert (or, in a gather, silently reading another row's memory).
    bad = active & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        positions = bad.nonzero()
        first = tuple(positions[0].tolist())
        raise core.target_out_of_range(first, targets[first].item(), vocab, len(positions))


class _MaskedNLLSum(torch.autograd.Function):
    """``sum(weights * loss)`` with loss ``(1 - eps) * nll + eps * mean_c(-log p_c)`` per position.

    nll is computed as ``log(sum(exp(x - max))) - (x_t - max)``: ``x - max`` is exact, so the
    rounding does not grow with the logits' magnitude (``logsumexp(x) - x_t`` loses 1e-3 at 1e4).
    """

    @staticmethod
    def forward(ctx, logits, targets, weights, smoothing):
        maxes = logits.amax(-1, keepdim=True).to(weights.dtype)
        shifted = _shifted(logits, maxes)  # the one logits-sized temporary
        loss = -shifted.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        mean_shifted = shifted.mean(-1) if smoothing else None
        sums = shifted.exp_().sum(-1)
        del shifted
        log_sums = sums.log()
        loss += log_sums
        if smoothing:
            loss = (1.0 - smoothing) * loss + smoothing * (log_sums - mean_shifted)
        ctx.smoothing = smoothing
        ctx.save_for_backward(logits, targets, weights, maxes, sums, loss)
        return (weights * loss).sum()

    @staticmethod
    def backward(ctx, grad_total):
        logits, targets, weights, maxes, sums, loss = ctx.saved_tensors
        smoothing = ctx.smoothing
        coef = (grad_total * weights).unsqueeze(-1)  # d total / d loss, per position
        grad_logits = grad_weights = None
        if ctx.needs_input_grad[0]:
            # d loss / d logits = softmax - (1 - eps) * one_hot - eps / vocab, built in place.
            grad = _shifted(logits, maxes).exp_()
            grad.mul_(coef / sums.unsqueeze(-1))
            grad.scatter_add_(-1, targets.unsqueeze(-1), -(1.0 - smoothing) * coef)
            if smoothing:
                grad.sub_((smoothing / logits.shape[-1]) * coef)
            grad_logits = grad.to(logits.dtype)
        if ctx.needs_input_grad[2]:
            # Masked positions (weight 0) hold an arbitrary target; their derivative is defined as 0.
            grad_weights = torch.where(weights != 0, grad_total * loss, torch.zeros_like(loss))
        return grad_logits, None, grad_weights, None


def _shifted(logits: torch.Tensor, maxes: torch.Tensor) -> torch.Tensor:
    """``logits - maxes`` in the compute dtype, as one new buffer (16-bit logits: cast, then shift in place)."""
    if logits.dtype == maxes.dtype:
        return logits - maxes
    return logits.to(maxes.dtype).sub_(maxes)


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return core.BOOL
    if dtype.is_floating_point:
        return core.FLOAT
    if dtype.is_complex:
        return "c"
    return core.INT
