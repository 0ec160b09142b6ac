"""Data loading, JAX side: the same sampler and collate as torch's ``DataLoader``
(``torch_impl.data``, which documents what is batched), with batches collated in a background
thread while the device works. Batches are numpy arrays (molecules: int32, JAX's integer; a dict
of arrays or per-row dicts: their own dtypes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jax_impl.collate import collate_molecules
from ml_patterns.loader import BatchLoader, plan_loader
from ml_patterns.samplers import make_sampler


def make_loader(
    dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    group_by_length: bool = False,
    prefetch: int = 2,
    collate: Callable[[Any], Any] | None = None,
    **collate_options,
) -> BatchLoader:
    """A ``BatchLoader`` of numpy batches; ``prefetch`` batches are prepared ahead (0: none). The
    sampler is ``loader.sampler``. Other arguments: ``torch_impl.data.make_loader``."""
    data, collate_fn, _ = plan_loader(
        dataset, collate_molecules, collate, group_by_length=group_by_length, collate_options=collate_options
    )
    sampler = make_sampler(
        data, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, group_by_length=group_by_length
    )
    return BatchLoader(data, sampler, collate_fn, prefetch=prefetch)
