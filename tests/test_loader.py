import pickle
import threading

import numpy as np
import pytest
import torch

import jax_impl.data
import torch_impl.data
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


# -- make_loader for any records or arrays, on both backends -----------------------------------
IMPLS = {"torch": torch_impl.data, "jax": jax_impl.data}


def as_numpy(batch):
    return {
        key: value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value) for key, value in batch.items()
    }


def table(n=23):
    rng = np.random.default_rng(0)
    return {
        "x": rng.normal(size=(n, 3)).astype(np.float32),
        "y": rng.integers(0, 5, size=n),
        "mask": rng.random(n) > 0.5,
    }


def test_a_dict_of_arrays_batches_the_same_rows_on_both_backends():
    arrays = table()
    batches = {name: [as_numpy(b) for b in data.make_loader(arrays, 5, seed=7)] for name, data in IMPLS.items()}
    order = BatchSampler(23, 5, seed=7).order(0)
    assert [len(b["x"]) for b in batches["torch"]] == [5, 5, 5, 5, 3]
    for name, got in batches.items():
        for i, batch in enumerate(got):
            rows = order[i * 5 : (i + 1) * 5]
            assert list(batch) == ["x", "y", "mask"]
            for key in arrays:
                assert batch[key].dtype == arrays[key].dtype, (name, key)
                np.testing.assert_array_equal(batch[key], arrays[key][rows])
    first_torch = next(iter(torch_impl.data.make_loader(arrays, 5, seed=7)))
    assert isinstance(first_torch["x"], torch.Tensor)  # torch's loader yields tensors


def test_per_row_dicts_are_stacked_the_same_on_both_backends():
    arrays = table(10)
    rows = [{key: value[i] for key, value in arrays.items()} for i in range(10)]
    for drop_last in (False, True):
        got = {
            name: [as_numpy(b) for b in data.make_loader(rows, 4, seed=1, drop_last=drop_last)]
            for name, data in IMPLS.items()
        }
        assert len(got["torch"]) == len(got["jax"]) == (2 if drop_last else 3)
        for a, b in zip(got["torch"], got["jax"]):
            assert list(a) == list(b) == ["x", "y", "mask"]
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
        batch = got["jax"][0]
        order = BatchSampler(10, 4, seed=1).order(0)[:4]
        np.testing.assert_array_equal(batch["x"], arrays["x"][order])


@pytest.mark.parametrize("backend", IMPLS)
def test_arrays_of_different_lengths_are_refused_naming_keys_and_lengths(backend):
    with pytest.raises(ValueError, match=r"one row per sample.*'x': 10, 'y': 9"):
        IMPLS[backend].make_loader({"x": np.zeros((10, 2)), "y": np.zeros(9)}, 4)
    with pytest.raises(ValueError, match=r"\['w'\] have no rows"):
        IMPLS[backend].make_loader({"x": np.zeros(3), "w": np.float32(1.0)}, 4)


@pytest.mark.parametrize("backend", IMPLS)
def test_rows_that_cannot_be_stacked_and_molecule_options_are_refused(backend):
    rows = [{"x": np.zeros(3)}, {"x": np.zeros(4)}]
    with pytest.raises(ValueError, match=r"key 'x' has rows of shapes \[\(3,\), \(4,\)\]"):
        list(IMPLS[backend].make_loader(rows, 2, shuffle=False, **({"prefetch": 0} if backend == "jax" else {})))
    with pytest.raises(ValueError, match=r"row 1 has keys \['y'\]"):
        list(IMPLS[backend].make_loader([{"x": 1}, {"y": 2}], 2, shuffle=False))
    with pytest.raises(ValueError, match=r"row 0 is a ndarray, not a dict of arrays: pass collate="):
        list(IMPLS[backend].make_loader([np.zeros(2), np.zeros(2)], 2, shuffle=False))
    with pytest.raises(ValueError, match=r"collate options \['max_length'\] are the molecule collate's"):
        IMPLS[backend].make_loader(table(), 4, max_length=8)
    with pytest.raises(ValueError, match="group_by_length groups molecules"):
        IMPLS[backend].make_loader(table(), 4, group_by_length=True)


@pytest.mark.parametrize("backend", IMPLS)
def test_molecule_records_keep_the_molecule_collate_and_a_collate_of_ones_own_wins(backend, default_dataset):
    dataset = LazyDataset(default_dataset[0], split="val")
    batch = next(iter(IMPLS[backend].make_loader(dataset, 4, shuffle=False, max_length=64)))
    assert {"input_ids", "attention_mask", "labels"} <= set(batch)
    smiles = next(
        iter(IMPLS[backend].make_loader(dataset, 4, shuffle=False, collate=lambda r: [x["smiles"] for x in r]))
    )
    assert smiles == [dataset[i]["smiles"] for i in range(4)]


def test_the_torch_array_collate_can_go_to_spawned_workers():
    # Worker processes started by spawn (macOS, Windows) receive the collate pickled: a closure
    # would fail there. (Forking a worker here would fork a process JAX's threads run in.)
    loader = torch_impl.data.make_loader(table(), 6, seed=2)
    copy = pickle.loads(pickle.dumps(loader.collate_fn))
    rows = loader.dataset.__getitems__([3, 1, 4])
    expected, got = as_numpy(loader.collate_fn(rows)), as_numpy(copy(rows))
    for key in expected:
        np.testing.assert_array_equal(expected[key], got[key])
