"""Data loading, torch side: ``DataLoader`` over our ``BatchSampler`` and collate.

The contract (mirrored by ``jax_impl.data.make_loader``): one epoch per iteration, batches in the
sampler's order, the same batches on both backends. The sampler is reachable as
``loader.batch_sampler`` so a trainer can save and restore its state. What is batched, and how
(``ml_patterns.loader.plan_loader``):

- molecule records (``LazyDataset``, records with ``input_ids``): ``collate.collate_molecules``;
- a dict of numpy arrays, rows along axis 0 (``{"x": [N, 4], "y": [N]}``): batches
  ``{"x": [B, 4], "y": [B]}``, the rows the sampler picked;
- any other sequence of per-row dicts of arrays: the rows stacked per key (``np.stack``);
- ``collate``: a function of your own, records -> batch, for anything else.

Array batches come as tensors here (numpy's dtypes kept), as numpy arrays on the JAX side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ml_patterns.loader import plan_loader
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
    collate: Callable[[Any], Any] | None = None,
    **collate_options,
) -> DataLoader:
    """A ``DataLoader`` of batches of ``dataset``.

    Args:
        dataset: molecule records (e.g. ``ml_patterns.data.LazyDataset``), a dict of numpy arrays
            of one length along axis 0 (else a ``ValueError`` naming the keys and lengths), or a
            sequence of per-row dicts of arrays (see the module docstring).
        batch_size, shuffle, seed, drop_last: the sampler's (``ml_patterns.samplers``).
        group_by_length: batches of molecules of similar length (``LengthGroupedSampler``, the
            records' lengths read once here), else random batches (``BatchSampler``).
        num_workers: worker processes (0: load in the training process). Workers only change where
            records are read; the batches and their order stay the sampler's.
        collate: records -> batch, instead of the default for the records.
        **collate_options: ``collate_molecules`` keywords (``buckets``, ``max_length``, ...).
    """
    data, collate_fn, arrays = plan_loader(
        dataset, collate_molecules, collate, group_by_length=group_by_length, collate_options=collate_options
    )
    sampler = make_sampler(
        data, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, group_by_length=group_by_length
    )
    return DataLoader(
        data,
        batch_sampler=sampler,
        collate_fn=_TensorCollate(collate_fn) if arrays else collate_fn,
        num_workers=num_workers,
        persistent_workers=False,
    )


class _TensorCollate:
    """``collate`` whose numpy arrays become tensors (numbers and bools; strings stay numpy).
    A class, not a closure: worker processes pickle it."""

    def __init__(self, collate: Callable[[Any], dict[str, np.ndarray]]):
        self.collate = collate

    def __call__(self, records: Any) -> dict[str, Any]:
        return {key: _tensor(value) for key, value in self.collate(records).items()}


def _tensor(array: np.ndarray) -> Any:
    return torch.from_numpy(array) if array.dtype.kind in "biufc" else array
