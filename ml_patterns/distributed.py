"""Data parallelism, framework-free: one global batch, sliced per rank; global means from sums and counts.

The contract of ``torch_impl.distributed`` (DDP over ``torch.distributed``) and ``jax_impl.distributed``
(a device ``Mesh``, the batch sharded along ``"data"``), written once. Both give the training of one
device, up to the order of floating-point sums (docs/DISTRIBUTED.md).

Global batch semantics
    The sampler (``ml_patterns.samplers``) yields the GLOBAL batch, the same list of dataset indices on
    every rank. ``shard(indices, world_size, rank)`` is rank ``rank``'s part of it: a contiguous slice,
    sizes as ``numpy.array_split`` (the first ``n % world_size`` ranks hold one more sample), then
    padded to ``ceil(n / world_size)`` rows (or a fixed ``rows``: JAX's ``pad_batches_to``, so that a
    short last batch has the full ones' shape) with weight 0. So every rank or device holds the same
    number of rows (JAX needs equal shards; DDP then never meets a rank with an empty batch), and a
    final batch that does not divide by N is split the same way on both backends. Padding rows repeat
    the global batch's first sample (a valid input: no NaN that a zero weight could not cancel) and
    weigh 0 in every sum and count: no sample counts twice, unlike ``DistributedSampler``, which pads
    with duplicates that count. ``global_layout`` is the concatenation of every rank's shard: the JAX
    side puts rank ``r``'s shard on device ``r``.

The loss: sums and counts, never a mean of per-rank means
    A model trains data-parallel through ``loss_sums(batch, weight) -> {part: (sum, count)}``, where
    ``weight`` is the float32 ``[rows]`` row weight of the shard (1 real, 0 padding), folded into
    both the sum and the count of every part (a masked token loss multiplies its token mask by
    ``weight[:, None]``; a per-sample loss weighs each row). A part's loss weight is folded into its
    sum. The batch loss is ``sum_k S_k / C_k`` over the GLOBAL sums and counts (``global_mean``; a
    part whose global count is 0 adds 0), which is what one device computes on the whole batch.
    Averaging per-rank means instead is wrong as soon as ranks hold different numbers of real tokens
    (torchtune#1875): each rank's tokens would weigh ``1 / (N * C_rank)`` instead of ``1 / C``.

Gradients: the global-mean gradient, averaged once
    JAX: ``jax.jit`` over the global, sharded batch differentiates ``global_mean`` itself; XLA inserts
    the cross-device sums. torch: DDP all-reduces gradients and divides by N. Each rank therefore
    back-propagates ``ddp_objective`` = ``N * sum_k S_k,local / C_k,global``: DDP's average of these
    gradients is ``sum_k (1 / C_k) * sum_ranks grad S_k,rank``, the gradient of the global mean. The
    global counts come from one all-reduce before the backward pass (they are data, without
    gradient). Dividing by N again (``S_local / C_global`` alone) would average twice and shrink
    every step N-fold; tests show both traps move the training off the one-device run.

Epoch means
    A trainer's epoch mean weighs batch b by its number of real samples ``n_b``; under data
    parallelism ``n_b`` is the global batch's size (``len(indices)``, known on every rank from the
    sampler) and the batch loss the global one, so the epoch mean equals the one-device value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

DATA_AXIS = "data"  # the mesh axis the batch is sharded along (JAX)


@dataclasses.dataclass(frozen=True)
class Shard:
    """A rank's (or the whole mesh's) rows of one global batch.

    ``indices``: dataset indices, padding included; ``weight``: float32 ``[len(indices)]``, 1.0 for a
    real sample, 0.0 for padding.
    """

    indices: list[int]
    weight: np.ndarray

    @property
    def real(self) -> int:
        """Real (non-padding) samples."""
        return int(np.count_nonzero(self.weight))


_DATA_PARALLEL_NEED = "data-parallel training needs to form the global mean (a mean of per-rank means is wrong)"


def check_loss_sums(model: Any, need: str = _DATA_PARALLEL_NEED) -> None:
    """Refuses a model without ``loss_sums``, saying what ``need``s it (default: data parallelism)."""
    if not callable(getattr(model, "loss_sums", None)):
        raise TypeError(
            f"{type(model).__name__} has no loss_sums(batch, weight) -> {{part: (sum, count)}}, which {need}: "
            "see ml_patterns.distributed"
        )


def check_world(world_size: int, rank: int = 0) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")


def shard_sizes(n: int, world_size: int) -> list[int]:
    """Real samples per rank for a global batch of ``n``: ``numpy.array_split``'s sizes."""
    check_world(world_size)
    if n < 0:
        raise ValueError(f"batch size must be non-negative, got {n}")
    base, extra = divmod(n, world_size)
    return [base + (rank < extra) for rank in range(world_size)]


def shard_rows(n: int, world_size: int) -> int:
    """Rows of each rank's shard of a batch of ``n``: ``ceil(n / world_size)``, the fewest that hold
    every rank's samples in equal shards."""
    return math.ceil(n / world_size)


def shard(indices: Sequence[int], world_size: int, rank: int, rows: int | None = None) -> Shard:
    """Rank ``rank``'s part of the global batch ``indices``: its contiguous slice, padded to
    ``rows`` rows (default ``ceil(len(indices) / world_size)``, the fewest) with weight-0 repeats of
    ``indices[0]``. A fixed ``rows`` gives a short last batch the shape of the full ones
    (``Trainer(pad_batches_to=...)``: one program for both, where a backend compiles one per shape).

    Raises ``ValueError`` for an empty batch (no rank could pad), a bad ``world_size``/``rank``, or
    ``rows`` too few for the rank's samples.
    """
    check_world(world_size, rank)
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("cannot shard an empty batch: the sampler yielded no index")
    sizes = shard_sizes(len(indices), world_size)
    start = sum(sizes[:rank])
    fewest = shard_rows(len(indices), world_size)
    if rows is None:
        rows = fewest
    elif rows < fewest:
        raise ValueError(
            f"a batch of {len(indices)} samples over {world_size} rank(s) needs {fewest} rows per rank, "
            f"{rows} asked: pad to at least the largest batch"
        )
    real = indices[start : start + sizes[rank]]
    weight = np.zeros(rows, np.float32)
    weight[: len(real)] = 1.0
    return Shard(real + [indices[0]] * (rows - len(real)), weight)


def global_layout(indices: Sequence[int], world_size: int, rows: int | None = None) -> Shard:
    """Every rank's ``shard`` (of ``rows`` rows) concatenated in rank order: ``world_size * rows``
    rows (default ``rows``: ``ceil(n / world_size)``), so that splitting it into ``world_size`` equal
    blocks gives block ``r`` = rank ``r``'s shard."""
    shards = [shard(indices, world_size, rank, rows) for rank in range(world_size)]
    return Shard([i for s in shards for i in s.indices], np.concatenate([s.weight for s in shards]))


def take_rows(batch: Any, positions: Sequence[int]) -> Any:
    """Rows ``positions`` of every array in ``batch`` (numpy arrays or tensors: anything with a
    ``shape``), walking mappings, lists and tuples; a leaf without a shape is kept as it is."""
    if hasattr(batch, "shape"):
        return batch[list(positions)]
    if isinstance(batch, Mapping):
        return {k: take_rows(v, positions) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(take_rows(v, positions) for v in batch)
    return batch


def rank_rows(batch: Any, n: int, world_size: int, rank: int, rows: int | None = None) -> tuple[Any, np.ndarray]:
    """``(rows, weight)``: rank ``rank``'s ``shard`` of a collated global batch of ``n`` samples,
    ``rows`` rows (default: the fewest)."""
    part = shard(range(n), world_size, rank, rows)
    return take_rows(batch, part.indices), part.weight


def global_rows(batch: Any, n: int, world_size: int, rows: int | None = None) -> tuple[Any, np.ndarray]:
    """``(rows, weight)``: a collated global batch of ``n`` samples in ``global_layout`` (JAX), ``rows``
    per device."""
    layout = global_layout(range(n), world_size, rows)
    return take_rows(batch, layout.indices), layout.weight


def global_mean(parts: Mapping[str, tuple[Any, Any]], safe_divide: Callable[[Any, Any], Any]) -> Any:
    """``sum_k S_k / C_k`` over ``{part: (S_k, C_k)}``; ``safe_divide(s, c)`` is ``s / c``, and 0 where
    ``c == 0`` (each backend passes its own, a ``where``). Plain arithmetic otherwise: works on torch
    tensors and inside ``jax.jit``."""
    if not parts:
        raise ValueError("loss_sums returned no part: expected {part: (sum, count)}")
    terms = [safe_divide(s, c) for s, c in parts.values()]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def ddp_objective(
    local: Mapping[str, tuple[Any, Any]],
    global_counts: Mapping[str, Any],
    world_size: int,
    safe_divide: Callable[[Any, Any], Any],
) -> Any:
    """What a DDP rank back-propagates: ``world_size * sum_k S_k,local / C_k,global`` (module
    docstring: DDP's mean over ranks of its gradient is the global-mean gradient)."""
    missing = sorted(set(local) ^ set(global_counts))
    if missing:
        raise KeyError(f"parts {missing} are not in both the local sums and the global counts")
    return world_size * global_mean({k: (s, global_counts[k]) for k, (s, _) in local.items()}, safe_divide)
