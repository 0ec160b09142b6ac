"""Batch loading shared by both backends: sampler order, collate, and background prefetch; what
a backend's ``make_loader`` batches (molecule records, a dict of arrays, per-row dicts: ``plan_loader``).

torch feeds ``BatchSampler`` and its collate to ``torch.utils.data.DataLoader``; JAX uses
``BatchLoader`` below with the numpy collate. Either way the batches are the sampler's, in the
sampler's order, so both backends see identical data.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from ml_patterns.samplers import BatchSampler

T = TypeVar("T")
_DONE = object()


class Prefetcher(Generic[T]):
    """Iterates ``source`` in a background thread, keeping up to ``size`` items ready.

    Collating the next batch (numpy, file reads: both release the GIL for most of their time)
    overlaps the device's work on the current one. An exception in the thread is re-raised in the
    consumer at the position where it happened; closing early stops the thread.
    """

    def __init__(self, source: Iterable[T], size: int = 2):
        if size < 1:
            raise ValueError(f"prefetch size must be positive, got {size}")
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(source),), daemon=True)
        self._thread.start()

    def _run(self, iterator: Iterator[T]) -> None:
        try:
            for item in iterator:
                if not self._put(item):
                    return
        except BaseException as error:  # handed to the consumer, not lost in the thread
            self._put(_Raised(error))
            return
        self._put(_DONE)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, _Raised):
                    raise item.error
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


class BatchLoader:
    """``for batch in loader``: one epoch of ``collate([dataset[i] for i in indices])``.

    Args:
        dataset: anything indexable by int (e.g. ``LazyDataset``).
        sampler: yields index lists; its state is the loader's (``state_dict`` for resume).
        collate: list of records -> batch.
        prefetch: batches prepared ahead in a background thread (0: none).
    """

    def __init__(self, dataset, sampler: BatchSampler, collate: Callable[[list], Any], prefetch: int = 2):
        self.dataset, self.sampler, self.collate, self.prefetch = dataset, sampler, collate, prefetch

    def __len__(self) -> int:
        return len(self.sampler)

    def _batches(self) -> Iterator[Any]:
        # A dataset that fetches a batch at once (``__getitems__``, as torch's DataLoader asks it) does.
        fetch = getattr(self.dataset, "__getitems__", None)
        for indices in self.sampler:
            yield self.collate(fetch(indices) if fetch is not None else [self.dataset[i] for i in indices])

    def __iter__(self) -> Iterator[Any]:
        if self.prefetch == 0:
            return self._batches()
        return iter(Prefetcher(self._batches(), self.prefetch))


class ArrayDataset:
    """The rows of a dict of arrays (rows along axis 0): ``dataset[i]`` is ``{key: array[i]}`` and
    ``dataset.__getitems__(indices)`` a whole batch, ``{key: array[indices]}`` (one indexing per
    key, no per-row stacking; torch's ``DataLoader`` and ``BatchLoader`` both fetch batches so).

    Raises ``ValueError`` naming the keys and their lengths unless every array has the same number
    of rows, and naming the key of a 0-d value."""

    def __init__(self, arrays: Mapping[str, Any]):
        if not arrays:
            raise ValueError("the dict of arrays is empty: give at least one array, rows along axis 0")
        self.arrays = {key: np.asarray(value) for key, value in arrays.items()}
        scalars = [key for key, value in self.arrays.items() if value.ndim == 0]
        if scalars:
            raise ValueError(f"array(s) {scalars} have no rows (0-d): every value needs one row per sample (axis 0)")
        lengths = {key: len(value) for key, value in self.arrays.items()}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{key!r}: {n}" for key, n in lengths.items())
            raise ValueError(f"the arrays must have one row per sample, the same number each; got rows {listed}")
        self._length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {key: value[index] for key, value in self.arrays.items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        rows = np.asarray(indices, dtype=np.int64)
        return {key: value[rows] for key, value in self.arrays.items()}


def stack_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Per-row dicts of arrays -> ``{key: [B, ...] array}`` (``np.stack`` per key). Raises
    ``ValueError`` naming the row whose keys, or the key whose shapes, differ from the first row's."""
    first = rows[0]
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(
                f"row {index} is a {type(row).__name__}, not a dict of arrays: pass collate= (records -> batch) "
                "to batch such records"
            )
        if set(row) != set(first):
            raise ValueError(f"row {index} has keys {sorted(row)}, the batch's first row {sorted(first)}")
    batch = {}
    for key in first:
        values = [np.asarray(row[key]) for row in rows]
        shapes = {value.shape for value in values}
        if len(shapes) > 1:
            raise ValueError(
                f"key {key!r} has rows of shapes {sorted(shapes)} in one batch: rows must have one shape to be "
                "stacked (pad them first, or pass a collate of your own)"
            )
        batch[key] = np.stack(values)
    return batch


def take_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The collate of an ``ArrayDataset``: its ``__getitems__`` already made the batch."""
    return batch


def plan_loader(
    data: Any,
    molecule_collate: Callable[..., Any],
    collate: Callable[[Any], Any] | None,
    *,
    group_by_length: bool,
    collate_options: Mapping[str, Any],
) -> tuple[Any, Callable[[Any], Any], bool]:
    """What a backend's ``make_loader`` iterates: ``(dataset, collate, arrays)``.

    ``data``: a dict of arrays (an ``ArrayDataset`` of it, batches ``take_batch``), molecule records
    (records with ``input_ids``, e.g. ``LazyDataset``: ``molecule_collate`` with
    ``collate_options``), or any other sequence of per-row dicts of arrays (``stack_rows``); a
    ``collate`` given wins. ``arrays``: whether the batches are the numpy dicts of ``take_batch`` or
    ``stack_rows`` (a backend converts those; the molecule and the user's collate are left alone).
    """
    if isinstance(data, Mapping):
        data = ArrayDataset(data)
    molecules = collate is None and not isinstance(data, ArrayDataset) and _molecule_records(data)
    if collate_options and not molecules:
        raise ValueError(
            f"collate options {sorted(collate_options)} are the molecule collate's; these records are not "
            "molecules (no 'input_ids'), or a collate of your own was given"
        )
    if group_by_length and not molecules:
        raise ValueError("group_by_length groups molecules by their 'input_ids' length; these records have none")
    if collate is not None:
        return data, collate, False
    if molecules:
        return data, functools.partial(molecule_collate, **collate_options), False
    return data, take_batch if isinstance(data, ArrayDataset) else stack_rows, True


def _molecule_records(dataset: Any) -> bool:
    if len(dataset) == 0:
        return True  # nothing to tell from; the default (molecules) reports an empty loader as before
    first = dataset[0]
    return isinstance(first, Mapping) and "input_ids" in first


def batch_rng(seed: int, epoch: int, batch_index: int, stream: int = 0) -> np.random.Generator:
    """The random stream of one batch (e.g. for token masking), the same on both backends.

    Derived from the position, not drawn from a running generator, so resuming mid-run and
    prefetching ahead both leave every batch's randomness unchanged. ``stream`` separates uses
    (training and evaluation batches) that share positions.
    """
    return np.random.default_rng((seed, epoch, batch_index, stream))


def sample_count(labels: Any) -> int:
    """Examples in a batch, from its labels: ``[B]`` array(s), or a dict of them."""
    first = next(iter(labels.values())) if isinstance(labels, dict) else labels
    shape: Sequence[int] = first.shape
    return int(shape[0])
