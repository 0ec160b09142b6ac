import threading

import numpy as np
import pytest

from ml_patterns.data import LazyDataset
from ml_patterns.loader import BatchLoader, Prefetcher, batch_rng, sample_count
from ml_patterns.samplers import BatchSampler


def test_prefetcher_keeps_order():
    assert list(Prefetcher(range(100), size=3)) == list(range(100))


def test_prefetcher_reraises_the_producers_error_in_place():
    def source():
        yield 1
        yield 2
        raise RuntimeError("shard 7 is corrupt")

    seen = []
    with pytest.raises(RuntimeError, match="shard 7"):
        for item in Prefetcher(source()):
            seen.append(item)
    assert seen == [1, 2]


def test_prefetcher_stops_its_thread_when_abandoned():
    before = threading.active_count()
    iterator = iter(Prefetcher(iter(range(10**9)), size=2))
    next(iterator)
    iterator.close()
    assert threading.active_count() == before


def test_loader_yields_the_samplers_batches(default_dataset):
    dataset = LazyDataset(default_dataset[0], split="val")
    sampler = BatchSampler(len(dataset), 64, seed=1)
    loader = BatchLoader(dataset, sampler, collate=lambda records: [r["smiles"] for r in records], prefetch=2)
    expected_order = BatchSampler(len(dataset), 64, seed=1).order(0)
    smiles = [s for batch in loader for s in batch]
    assert smiles == [dataset[int(i)]["smiles"] for i in expected_order]
    assert len(loader) == len(sampler) == 8
    assert sampler.epoch == 1


def test_batch_rng_depends_on_position_only():
    a = batch_rng(0, 3, 5).integers(0, 1000, 10)
    assert np.array_equal(a, batch_rng(0, 3, 5).integers(0, 1000, 10))
    assert not np.array_equal(a, batch_rng(0, 3, 6).integers(0, 1000, 10))
    assert not np.array_equal(a, batch_rng(1, 3, 5).integers(0, 1000, 10))


def test_sample_count():
    assert sample_count(np.zeros(7)) == 7
    assert sample_count({"a": np.zeros(3), "b": np.zeros(3)}) == 3
