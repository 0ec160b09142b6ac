"""Batch samplers shared by both backends: seeded, resumable, the same batches on either side.

Both backends iterate a sampler of this module over a dataset (torch through ``DataLoader``'s
``batch_sampler``, JAX through ``ml_patterns.loader.BatchLoader``), so they see identical records in
identical order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np


class BatchSampler:
    """Yields lists of dataset indices, a fresh seeded permutation each epoch, resumable mid-epoch.

    The permutation of epoch e is a pure function of ``(seed, e)``, so the sampler's whole state is
    two integers and any two samplers built alike produce the same batches. Iterating once runs the
    rest of the current epoch and advances to the next; usable as a torch ``DataLoader``
    ``batch_sampler`` as is.

    Note that ``state_dict()`` counts batches *handed out*: a loader that prefetches has taken some
    it has not yet delivered, so checkpoint at epoch boundaries or from the consumer's count.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.epoch = 0
        self.position = 0  # batches of the current epoch already handed out

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The index order of ``epoch``: ``[n]`` int64."""
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng((self.seed, epoch)).permutation(self.n)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order(self.epoch)
        while self.position < len(self):
            start = self.position * self.batch_size
            self.position += 1
            yield order[start : start + self.batch_size].tolist()
        self.epoch += 1
        self.position = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int | bool]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "n": self.n,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores ``epoch`` and ``position``; refuses a state from a differently built sampler."""
        mine = self.state_dict()
        mismatched = {k: (state.get(k), mine[k]) for k in ("n", "batch_size", "seed", "shuffle", "drop_last") if state.get(k) != mine[k]}
        if mismatched:
            raise ValueError(f"sampler state does not match this sampler (saved, current): {mismatched}")
        if not 0 <= state["position"] <= len(self):
            raise ValueError(f"sampler state position {state['position']} outside [0, {len(self)}]")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
