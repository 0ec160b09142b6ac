"""Collate: torch against JAX (numpy), exactly equal, on random batches and on the default dataset.

The dtypes differ by contract (torch int64 ids and integer labels, numpy int32, as ``ml_patterns.collate``
documents); the values must be identical (PARITY.md: collate outputs exactly equal).
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jax_impl.collate import collate_molecules as jax_collate
from ml_patterns.collate import dataset_buckets
from ml_patterns.data import LazyDataset
from ml_patterns.samplers import BatchSampler
from torch_impl.collate import collate_molecules as torch_collate


def _assert_same(torch_out: dict, jax_out: dict) -> None:
    assert set(torch_out) == set(jax_out)
    assert torch_out["input_ids"].dtype == torch.int64 and jax_out["input_ids"].dtype == np.int32
    np.testing.assert_array_equal(torch_out["input_ids"].numpy(), jax_out["input_ids"])
    np.testing.assert_array_equal(torch_out["attention_mask"].numpy(), jax_out["attention_mask"])
    if "labels" in torch_out:
        t_labels, j_labels = torch_out["labels"], jax_out["labels"]
        if isinstance(t_labels, dict):
            assert list(t_labels) == list(j_labels)
            pairs = [(t_labels[k].numpy(), j_labels[k]) for k in t_labels]
        else:
            pairs = [(t_labels.numpy(), j_labels)]
        for t, j in pairs:
            # Integer labels: int64 on torch, int32 on JAX (the documented widths); float labels float32.
            assert (t.dtype, j.dtype) in ((np.float32, np.float32), (np.int64, np.int32))
            np.testing.assert_array_equal(t, j)


def _reference(batch, pad_token_id, length):
    """Plain Python: each record's ids (cut to ``length``), padded on the right."""
    ids = [list(r["input_ids"])[:length] for r in batch]
    return (
        np.array([row + [pad_token_id] * (length - len(row)) for row in ids]),
        np.array([[True] * len(row) + [False] * (length - len(row)) for row in ids]),
    )


@st.composite
def batches(draw):
    size = draw(st.integers(1, 12))
    label_kind = draw(st.sampled_from(["none", "single", "multi", "classes"]))
    names = draw(st.lists(st.sampled_from(["TPSA", "MolWt", "logS", "pKa"]), min_size=1, max_size=3, unique=True))
    as_array = draw(st.booleans())
    batch = []
    for _ in range(size):
        ids = draw(st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=40))
        record = {"input_ids": np.array(ids, np.int64) if as_array else ids, "smiles": "C"}
        number = st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(-(2**31), 2**31 - 1)
        if label_kind == "single":
            record["label"] = draw(number)
        elif label_kind == "multi":
            record["label"] = {name: draw(number) for name in names}
        elif label_kind == "classes":  # integer class ids: stay integer on both sides
            record["label"] = {"class": draw(st.integers(0, 9)), "score": draw(number)}
        batch.append(record)
    padding = draw(
        st.sampled_from(
            [
                {},
                {"pad_to_multiple_of": 8},
                {"buckets": (8, 24, 40)},
                {"max_length": 16},
                {"max_length": 32, "pad_to_multiple_of": 16},
            ]
        )
    )
    return batch, draw(st.integers(0, 9)), padding


@settings(max_examples=100)
@given(batches())
def test_random_batches_collate_identically(drawn):
    batch, pad_token_id, padding = drawn
    torch_out = torch_collate(batch, pad_token_id, **padding)
    jax_out = jax_collate(batch, pad_token_id, **padding)
    _assert_same(torch_out, jax_out)
    ids, mask = _reference(batch, pad_token_id, jax_out["input_ids"].shape[1])
    np.testing.assert_array_equal(jax_out["input_ids"], ids)
    np.testing.assert_array_equal(jax_out["attention_mask"], mask)


def test_default_dataset_epoch_collates_identically(default_dataset):
    root, _ = default_dataset
    dataset = LazyDataset(root, split="train")
    ladder = dataset_buckets(root)
    options = [{}, {"buckets": ladder}, {"pad_to_multiple_of": 8}, {"max_length": 48}]
    for step, indices in enumerate(BatchSampler(len(dataset), 64, shuffle=True, seed=1)):
        batch = [dataset[i] for i in indices]
        padding = options[step % len(options)]
        _assert_same(torch_collate(batch, **padding), jax_collate(batch, **padding))
