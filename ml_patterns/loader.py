"""Batch loading shared by both backends: sampler order, collate, and background prefetch.

torch feeds ``BatchSampler`` and its collate to ``torch.utils.data.DataLoader``; JAX uses
``BatchLoader`` below with the numpy collate. Either way the batches are the sampler's, in the
sampler's order, so both backends see identical data.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
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
        for indices in self.sampler:
            yield self.collate([self.dataset[i] for i in indices])

    def __iter__(self) -> Iterator[Any]:
        if self.prefetch == 0:
            return self._batches()
        return iter(Prefetcher(self._batches(), self.prefetch))


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
