"""Losses, torch side. The contract (shapes, dtypes, masking, all-masked, errors): ``ml_patterns.losses``.

The gradient is written by hand (``_MaskedNLLSum``) rather than left to autograd through
``log_softmax`` + ``gather``: autograd would keep the log-probabilities alive until the backward
pass, then allocate a zero-filled one-hot gradient beside the softmax one (three logits-sized
buffers at the peak, as ``F.cross_entropy`` does); here nothing logits-sized outlives the forward
pass, and the backward pass builds the gradient in place in its own output buffer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ml_patterns import losses as core
from ml_patterns.losses import TargetOutOfRangeError
from torch_impl.state import dtype_kind

__all__ = [
    "CombinedLoss",
    "TargetOutOfRangeError",
    "masked_binary_cross_entropy_sum",
    "masked_cross_entropy",
    "masked_cross_entropy_sum",
]


class CombinedLoss(nn.Module):
    """The seed's combined loss (contract: ``ml_patterns.losses``) as an ``nn.Module`` whose losses
    live in an ``nn.ModuleDict`` (``self.losses``), so a loss with parameters or buffers is
    registered, saved in ``state_dict`` and moved by ``.to()``. A plain function is accepted too
    (wrapped in a parameterless module)."""

    def __init__(self, losses: Mapping[str, nn.Module | Callable], weights: Mapping[str, float] | None = None):
        super().__init__()
        self.weights = core.check_losses(losses, weights)
        self.losses = nn.ModuleDict(
            {name: fn if isinstance(fn, nn.Module) else _FunctionLoss(fn) for name, fn in losses.items()}
        )

    def forward(
        self, predictions: Mapping[str, Any], targets: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return core.combine(self.losses, self.weights, predictions, targets)


class _FunctionLoss(nn.Module):
    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, prediction, target):
        return self.fn(prediction, target)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


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
        logits_kind=dtype_kind(logits.dtype),
        targets_kind=dtype_kind(targets.dtype),
        mask_kind=dtype_kind(mask.dtype),
        label_smoothing=label_smoothing,
    )
    compute_dtype = torch.float32 if torch.finfo(logits.dtype).bits < 32 else logits.dtype
    weights = mask.to(compute_dtype)
    active = weights != 0
    _check_targets(targets, active, vocab)
    safe_targets = torch.where(active, targets, torch.zeros_like(targets)).long()
    total = _MaskedNLLSum.apply(logits, safe_targets, weights, float(label_smoothing))
    return total, weights.sum()


def masked_binary_cross_entropy_sum(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum(bce * weights), sum(weights))``: torch's ``binary_cross_entropy_with_logits`` per element."""
    core.check_binary_cross_entropy_args(logits.shape, targets.shape, weights.shape, dtype_kind(logits.dtype))
    compute_dtype = torch.float32 if torch.finfo(logits.dtype).bits < 32 else logits.dtype
    weights = weights.to(compute_dtype)
    # A masked row's target may hold anything: 0 there, so that no NaN reaches the sum.
    targets = torch.where(weights != 0, targets.to(compute_dtype), 0.0)
    losses = F.binary_cross_entropy_with_logits(logits.to(compute_dtype), targets, reduction="none")
    return (losses * weights).sum(), weights.sum()


def _check_targets(targets: torch.Tensor, active: torch.Tensor, vocab: int) -> None:
    # A device-side assert, not ``bool(bad.any())``: reading the answer on the host would stall an
    # accelerator once per loss (and break a torch.compile graph). On the CPU the assert raises
    # here, synchronously, and the error then names the first bad position; on a GPU it fails the
    # stream, reported at the next sync with ``_ASYNC_MESSAGE``.
    bad = active & ((targets < 0) | (targets >= vocab))
    if torch.compiler.is_compiling():
        torch._assert_async(~bad.any(), _ASYNC_MESSAGE)
        return
    try:
        torch._assert_async(~bad.any(), _ASYNC_MESSAGE)
    except RuntimeError:
        positions = bad.nonzero()
        first = tuple(positions[0].tolist())
        raise core.target_out_of_range(first, targets[first].item(), vocab, len(positions)) from None


_ASYNC_MESSAGE = (
    "masked cross-entropy: an unmasked target is outside [0, vocab) (run the batch on the CPU to see which position)"
)


class _MaskedNLLSum(torch.autograd.Function):
    """``sum(weights * loss)`` with loss ``(1 - eps) * nll + eps * mean_c(-log p_c)`` per position.

    Both passes use torch's fused row-wise kernels (``log_softmax``, ``softmax``): each streams a
    row of logits from memory once, where separate max / subtract / exp / sum ops would stream the
    whole tensor several times. torch computes them as ``(x - max) - log(sum(exp(x - max)))``,
    whose rounding does not grow with the logits' magnitude (``logsumexp(x) - x_t`` loses 1e-3 at
    1e4). The forward pass works through the rows in chunks of at most ``_CHUNK_BYTES`` of float32,
    so its temporaries stay small; so does the backward pass for 16-bit logits, which computes each
    chunk in float32 and rounds it into the 16-bit gradient.
    """

    @staticmethod
    def forward(ctx, logits, targets, weights, smoothing):
        rows, row_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1, 1)
        losses = []
        for chunk in _row_chunks(rows):
            logp = torch.log_softmax(rows[chunk], dim=-1, dtype=weights.dtype)
            loss = -logp.gather(-1, row_targets[chunk]).squeeze(-1)
            if smoothing:
                loss = (1.0 - smoothing) * loss - smoothing * logp.mean(-1)
            losses.append(loss)
        loss = torch.cat(losses).view(targets.shape)
        ctx.smoothing = smoothing
        ctx.save_for_backward(logits, targets, weights, loss)
        return (weights * loss).sum()

    @staticmethod
    def backward(ctx, grad_total):
        logits, targets, weights, loss = ctx.saved_tensors
        grad_logits = grad_weights = None
        if ctx.needs_input_grad[0]:
            coef = (grad_total * weights).reshape(-1, 1)  # d total / d loss, per position
            rows, row_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1, 1)
            if logits.dtype == weights.dtype:  # float32: softmax's own output is the gradient buffer
                grad_logits = _loss_gradient(rows, row_targets, coef, ctx.smoothing).view(logits.shape)
            else:
                grad_logits = torch.empty_like(logits)
                grad_rows = grad_logits.view(rows.shape)
                for chunk in _row_chunks(rows):
                    grad_rows[chunk] = _loss_gradient(rows[chunk], row_targets[chunk], coef[chunk], ctx.smoothing)
        if ctx.needs_input_grad[2]:
            # Masked positions (weight 0) hold an arbitrary target; their derivative is defined as 0.
            grad_weights = torch.where(weights != 0, grad_total * loss, torch.zeros_like(loss))
        return grad_logits, None, grad_weights, None


_CHUNK_BYTES = 64 * 2**20


def _row_chunks(rows: torch.Tensor) -> list[slice]:
    """Slices of ``rows`` ([N, vocab]) holding at most ``_CHUNK_BYTES`` of float32 each."""
    step = max(1, _CHUNK_BYTES // (4 * rows.shape[1]))
    return [slice(start, start + step) for start in range(0, rows.shape[0], step)]


def _loss_gradient(rows, targets, coef, smoothing):
    """``coef * (softmax - (1 - eps) * one_hot - eps / vocab)`` for ``rows`` [N, vocab], built in
    place in one new float32 buffer (no one-hot: the target's share is a scatter)."""
    grad = torch.softmax(rows, dim=-1, dtype=coef.dtype)
    grad.mul_(coef)
    grad.scatter_add_(-1, targets, -(1.0 - smoothing) * coef)
    if smoothing:
        grad.sub_((smoothing / rows.shape[-1]) * coef)
    return grad
