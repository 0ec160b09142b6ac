"""Data loading, JAX side: the same sampler and collate as torch's ``DataLoader``
(``torch_impl.data``), with batches collated in a background thread while the device works."""

from __future__ import annotations

import functools

from jax_impl.collate import collate_molecules
from ml_patterns.loader import BatchLoader
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
    **collate_options,
) -> BatchLoader:
    """A ``BatchLoader`` of numpy molecule batches; ``prefetch`` batches are prepared ahead
    (0: none). The sampler is ``loader.sampler``. Other arguments: ``torch_impl.data.make_loader``."""
    sampler = make_sampler(
        dataset, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, group_by_length=group_by_length
    )
    return BatchLoader(dataset, sampler, functools.partial(collate_molecules, **collate_options), prefetch=prefetch)
