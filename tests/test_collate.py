"""Collate: the core's checks, padded-length rules and bucket ladders, and each backend's output contract.

Both backends producing the same numbers is parity_tests/test_collate.py.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jax_impl.collate import collate_molecules as jax_collate
from ml_patterns import collate as core
from ml_patterns.data import LazyDataset
from ml_patterns.samplers import BatchSampler
from torch_impl.collate import collate_molecules as torch_collate

BACKENDS = pytest.mark.parametrize("collate", [torch_collate, jax_collate], ids=["torch", "jax"])


def _records(lengths, labels="multi"):
    records = []
    for i, n in enumerate(lengths):
        record = {"input_ids": list(range(5, 5 + n)), "smiles": "C" * n}
        if labels == "multi":
            record["label"] = {"TPSA": float(i), "MolWt": 100.0 + i}
        elif labels == "single":
            record["label"] = 0.5 * i
        records.append(record)
    return records


def _numpy(value):
    return value.numpy() if isinstance(value, torch.Tensor) else value


# ---- output contract -----------------------------------------------------------------------------


def test_torch_output_dtypes_and_shapes():
    out = torch_collate(_records([3, 5, 1]))
    assert out["input_ids"].dtype == torch.int64 and out["input_ids"].shape == (3, 5)
    assert out["attention_mask"].dtype == torch.bool and out["attention_mask"].shape == (3, 5)
    assert {k: (v.dtype, tuple(v.shape)) for k, v in out["labels"].items()} == {
        "TPSA": (torch.float32, (3,)),
        "MolWt": (torch.float32, (3,)),
    }
    assert list(out["labels"]) == ["TPSA", "MolWt"]  # the records' own order


def test_jax_output_is_numpy_with_documented_dtypes():
    out = jax_collate(_records([3, 5, 1]))
    assert isinstance(out["input_ids"], np.ndarray) and out["input_ids"].dtype == np.int32
    assert out["attention_mask"].dtype == np.bool_
    assert all(v.dtype == np.float32 and v.shape == (3,) for v in out["labels"].values())


@BACKENDS
def test_padding_values_and_mask(collate):
    out = collate(_records([3, 1, 2], labels="single"), pad_token_id=7)
    np.testing.assert_array_equal(_numpy(out["input_ids"]), [[5, 6, 7], [5, 7, 7], [5, 6, 7]])
    np.testing.assert_array_equal(_numpy(out["attention_mask"]), [[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(_numpy(out["labels"]), np.array([0.0, 0.5, 1.0], np.float32))


@BACKENDS
def test_unlabelled_records_give_no_labels(collate):
    assert set(collate(_records([2, 3], labels=None))) == {"input_ids", "attention_mask"}


@BACKENDS
def test_numpy_and_tuple_ids_are_accepted(collate):
    records = [{"input_ids": np.array([5, 6], np.int16)}, {"input_ids": (5, 6, 7)}, {"input_ids": np.arange(1, 2)}]
    np.testing.assert_array_equal(_numpy(collate(records)["input_ids"]), [[5, 6, 0], [5, 6, 7], [1, 0, 0]])


# ---- padded length ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "lengths", "expected"),
    [
        ({}, [3, 9, 4], 9),
        ({"pad_to_multiple_of": 8}, [3, 9, 4], 16),
        ({"pad_to_multiple_of": 8}, [8, 2], 8),
        ({"buckets": (4, 10, 20)}, [3, 9, 4], 10),
        ({"buckets": (4, 10, 20)}, [4], 4),
        ({"max_length": 5}, [3, 9, 4], 5),
        ({"max_length": 16, "pad_to_multiple_of": 8}, [3, 20], 16),
        ({"max_length": 10, "buckets": (4, 8, 10)}, [3, 12], 10),
    ],
)
@BACKENDS
def test_padded_length_rules(collate, options, lengths, expected):
    out = collate(_records(lengths), **options)
    assert tuple(out["input_ids"].shape) == (len(lengths), expected)


@BACKENDS
def test_truncation_keeps_each_records_first_tokens(collate):
    out = collate(_records([7, 2, 5]), max_length=4)
    np.testing.assert_array_equal(_numpy(out["input_ids"]), [[5, 6, 7, 8], [5, 6, 0, 0], [5, 6, 7, 8]])
    assert _numpy(out["attention_mask"]).sum(1).tolist() == [4, 2, 4]


@BACKENDS
def test_refusing_to_truncate_names_the_record(collate):
    with pytest.raises(ValueError, match="record 2 has 9 tokens, more than max_length 5"):
        collate(_records([3, 4, 9]), max_length=5, truncate=False)


@BACKENDS
def test_batch_longer_than_the_largest_bucket_is_refused(collate):
    with pytest.raises(ValueError, match="longest record has 9 tokens, more than the largest bucket 8"):
        collate(_records([3, 9]), buckets=(4, 8))


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"buckets": (4, 8), "pad_to_multiple_of": 8}, ValueError, "either buckets or pad_to_multiple_of"),
        ({"buckets": (8, 4)}, ValueError, "strictly increasing"),
        ({"buckets": (4, 4)}, ValueError, "strictly increasing"),
        ({"buckets": ()}, ValueError, "at least one length"),
        ({"buckets": (0, 4)}, ValueError, "each bucket must be >= 1"),
        ({"buckets": (4, 16), "max_length": 8}, ValueError, "go past max_length 8"),
        ({"pad_to_multiple_of": 8, "max_length": 12}, ValueError, "multiple of pad_to_multiple_of"),
        ({"pad_to_multiple_of": 0}, ValueError, "pad_to_multiple_of must be >= 1"),
        ({"max_length": 2.5}, TypeError, "max_length must be an integer"),
        ({"pad_token_id": -1}, ValueError, "pad_token_id must be >= 0"),
    ],
)
def test_bad_options_are_refused(options, error, message):
    with pytest.raises(error, match=message):
        core.flatten_batch(_records([2]), **options)


@BACKENDS
def test_integer_labels_stay_integer(collate):
    """Class ids reach integer-label cross-entropy as integers: int64 on torch, int32 on JAX."""
    int_dtype = torch.int64 if collate is torch_collate else np.int32
    records = [{"input_ids": [1, 2], "label": c} for c in (0, 2, np.int64(1))]
    labels = collate(records)["labels"]
    assert labels.dtype == int_dtype
    np.testing.assert_array_equal(_numpy(labels), [0, 2, 1])
    mixed = [{"input_ids": [1], "label": {"class": c, "score": s}} for c, s in ((3, 0.5), (1, 2))]
    out = collate(mixed)["labels"]
    assert out["class"].dtype == int_dtype and out["score"].dtype in (torch.float32, np.float32)
    np.testing.assert_array_equal(_numpy(out["class"]), [3, 1])
    np.testing.assert_array_equal(_numpy(out["score"]), np.array([0.5, 2.0], np.float32))
    floats = collate([{"input_ids": [1], "label": v} for v in (1, 2.5)])["labels"]  # one float: float32
    assert floats.dtype in (torch.float32, np.float32)
    if collate is torch_collate:
        logits = torch.zeros(3, 4, requires_grad=True)
        torch.nn.functional.cross_entropy(logits, labels).backward()  # float labels would be refused here


# ---- bad batches ---------------------------------------------------------------------------------


def _with(index, **changes):
    records = _records([2, 3, 2])
    records[index] = {**records[index], **changes}
    return records


def _without(index, key):
    records = _records([2, 3, 2])
    del records[index][key]
    return records


@pytest.mark.parametrize(
    ("batch", "error", "message"),
    [
        ([], ValueError, "empty batch"),
        ({"input_ids": [1]}, TypeError, "batch must be a list of records"),
        ([{"input_ids": [1]}, [1, 2]], TypeError, "record 1 must be a mapping"),
        (_without(1, "input_ids"), ValueError, r"record 1 has no 'input_ids' \(keys: \['label', 'smiles'\]\)"),
        (_with(2, input_ids=[5, 6.5]), TypeError, r"record 2: input_ids\[1\] = 6.5 is not an integer"),
        (_with(0, input_ids=["5"]), TypeError, r"record 0: input_ids\[0\] = '5' is not an integer"),
        (_with(1, input_ids=np.array([1.0, 2.0])), TypeError, "record 1: input_ids have dtype float64"),
        (_with(1, input_ids=[[1, 2], [3, 4]]), ValueError, r"record 1: input_ids must be 1-D, got shape \(2, 2\)"),
        (
            _with(1, input_ids=7),
            ValueError,
            "record 1: input_ids is not a 1-D sequence|record 1: input_ids must be 1-D",
        ),
        (_with(2, input_ids=[]), ValueError, "record 2 has empty input_ids"),
        (_with(1, input_ids=[3, -1]), ValueError, r"record 1: input_ids hold -1, outside \[0, 2147483647\]"),
        (_with(2, input_ids=[2**31]), ValueError, "record 2: input_ids hold 2147483648"),
        (_without(1, "label"), ValueError, "record 1 has no 'label' but record 0 has one"),
        (_records([2, 3], labels=None) + _records([2]), ValueError, "record 2 has a 'label' but record 0 has none"),
        (
            _with(1, label={"TPSA": 1.0}),
            ValueError,
            r"record 1 has label names differing .* missing \['MolWt'\], extra \[\]",
        ),
        (_with(2, label={"TPSA": 1.0, "MolWt": 2.0, "X": 3.0}), ValueError, r"record 2 .* extra \['X'\]"),
        (
            _with(1, label={"TPSA": 1.0, "Other": 2.0}),
            ValueError,
            r"record 1 .* missing \['MolWt'\], extra \['Other'\]",
        ),
        (_with(2, label=3.0), ValueError, "record 2 has a single label but record 0 a dict"),
        (_with(1, label={"TPSA": "high", "MolWt": 1.0}), TypeError, "record 1: label 'TPSA' = 'high' is not a number"),
        (_with(2, label={"TPSA": None, "MolWt": "x"}), TypeError, "record 2: label 'MolWt' = 'x' is not a number"),
        (
            _with(0, label={"TPSA": float("nan"), "MolWt": 1.0}),
            ValueError,
            "record 0: label 'TPSA' = nan is not a finite",
        ),
        (
            _with(1, label={"TPSA": 1e39, "MolWt": 1.0}),
            ValueError,
            "record 1: label 'TPSA' = 1e\\+39 is not a finite float32",
        ),
        (
            [{"input_ids": [1], "label": 1}, {"input_ids": [1], "label": 2**31}],
            ValueError,
            r"record 1: label = 2147483648 is an integer outside int32 \[-2147483648, 2147483647\]",
        ),
        (
            _records([2], labels="single") + [{"input_ids": [1], "label": {"a": 1.0}}],
            ValueError,
            "record 1 has a dict of labels",
        ),
    ],
)
@BACKENDS
def test_bad_batches_raise_naming_the_record(collate, batch, error, message):
    with pytest.raises(error, match=message):
        collate(batch)


# ---- bucket ladders ------------------------------------------------------------------------------


@given(
    low=st.integers(1, 300),
    span=st.integers(0, 2000),
    max_buckets=st.integers(1, 12),
    multiple_of=st.sampled_from([1, 8, 16]),
)
def test_bucket_ladder_properties(low, span, max_buckets, multiple_of):
    high = low + span
    ladder = core.bucket_ladder(low, high, max_buckets=max_buckets, multiple_of=multiple_of)
    assert 1 <= len(ladder) <= max_buckets
    assert list(ladder) == sorted(set(ladder))
    assert all(b % multiple_of == 0 for b in ladder)
    assert ladder[-1] >= high and ladder[-1] - high < multiple_of  # covers the longest, tightly
    assert ladder[0] >= low
    # Every length in range pads by a bounded ratio (geometric spacing), up to rounding.
    if len(ladder) > 1:
        ratio = (ladder[-1] / ladder[0]) ** (1 / (max_buckets - 1))
        for n in range(low, high + 1, max(1, span // 50)):
            length = core.padded_length(n, None, ladder)
            assert length < n * ratio + multiple_of


def test_dataset_buckets_cover_the_default_dataset(default_dataset):
    root, manifest = default_dataset
    ladder = core.dataset_buckets(root)
    assert len(ladder) <= 8 and ladder[-1] >= manifest["sequence_length"]["max"]
    assert ladder == core.bucket_ladder(manifest["sequence_length"]["min"], manifest["sequence_length"]["max"])


@BACKENDS
def test_default_dataset_epoch_with_buckets_has_at_most_eight_lengths(collate, default_dataset):
    root, _ = default_dataset
    dataset = LazyDataset(root, split="train")
    ladder = core.dataset_buckets(root)
    lengths = set()
    for indices in BatchSampler(len(dataset), 32, shuffle=True, seed=0):
        batch = [dataset[i] for i in indices]
        out = collate(batch, buckets=ladder)
        lengths.add(out["input_ids"].shape[1])
        assert _numpy(out["attention_mask"]).sum(1).tolist() == [len(r["input_ids"]) for r in batch]
    assert 1 < len(lengths) <= 8


def test_torch_collate_works_as_a_dataloader_collate_fn(default_dataset):
    root, _ = default_dataset
    dataset = LazyDataset(root, split="val")
    sampler = BatchSampler(len(dataset), 64, shuffle=False)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=functools.partial(torch_collate, pad_to_multiple_of=8)
    )
    batches = list(loader)
    assert len(batches) == len(sampler)
    assert sum(len(b["labels"]["TPSA"]) for b in batches) == len(dataset)
    assert all(b["input_ids"].shape[1] % 8 == 0 for b in batches)
