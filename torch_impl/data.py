"""Data loading, torch side: ``DataLoader`` over our ``BatchSampler`` and collate.

The contract (mirrored by ``jax_impl.data.make_loader``): one epoch per iteration, batches in the
sampler's order, each ``collate.collate_molecules`` of its records. The sampler is reachable as
``loader.batch_sampler`` so a trainer can save and restore its state.
"""

from __future__ import annotations

import functools

from torch.utils.data import DataLoader

from ml_patterns.samplers import make_sampler
from torch_impl.collate import collate_molecules


def make_loader(
    dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    group_by_length: bool = False,
    num_workers: int = 0,
    **collate_options,
) -> DataLoader:
    """A ``DataLoader`` of collated molecule batches.

    Args:
        dataset: e.g. ``ml_patterns.data.LazyDataset``.
        batch_size, shuffle, seed, drop_last: the sampler's (``ml_patterns.samplers``).
        group_by_length: batches of molecules of similar length (``LengthGroupedSampler``, the
            records' lengths read once here), else random batches (``BatchSampler``).
        num_workers: worker processes (0: load in the training process). Workers only change where
            records are read; the batches and their order stay the sampler's.
        **collate_options: ``collate_molecules`` keywords (``buckets``, ``max_length``, ...).
    """
    sampler = make_sampler(
        dataset, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, group_by_length=group_by_length
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=functools.partial(collate_molecules, **collate_options),
        num_workers=num_workers,
        persistent_workers=False,
    )
