"""BERT-style masking and the models' batch contract (ml_patterns.molecules.masking, ml_patterns.molecules.batches)."""

import numpy as np
import pytest

from ml_patterns.molecules.batches import (
    destandardize,
    prepare_autoencoder_batch,
    prepare_batch,
    prepare_multitask_batch,
)
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.molecules.masking import FIRST_REGULAR_ID, NEVER_MASKED, mask_tokens
from ml_patterns.molecules.tokenizer import BOS_ID, EOS_ID, MASK_ID, PAD_ID

VOCAB = 40


def padded_batch(rng, n=64, length=30):
    lengths = rng.integers(3, length + 1, size=n)
    ids = np.full((n, length), PAD_ID, dtype=np.int64)
    mask = np.arange(length) < lengths[:, None]
    for i, k in enumerate(lengths):
        ids[i, :k] = [BOS_ID, *rng.integers(FIRST_REGULAR_ID, VOCAB, size=k - 2), EOS_ID]
    return ids, mask


def test_never_selects_special_tokens_or_padding():
    rng = np.random.default_rng(0)
    ids, mask = padded_batch(rng)
    ids[:, 3] = np.where(mask[:, 3], MASK_ID, ids[:, 3])  # a MASK already in the input is never re-selected
    out = mask_tokens(ids, mask, np.random.default_rng(1), vocab_size=VOCAB, mask_prob=0.9)
    assert not np.isin(ids[out.mask], NEVER_MASKED).any()
    assert not out.mask[~mask].any()
    # Unselected positions are untouched, targets hold PAD there.
    np.testing.assert_array_equal(out.input_ids[~out.mask], ids[~out.mask])
    assert (out.targets[~out.mask] == PAD_ID).all()
    np.testing.assert_array_equal(out.targets[out.mask], ids[out.mask])
    assert out.input_ids.dtype == out.targets.dtype == np.int32 and out.mask.dtype == np.bool_


def test_the_80_10_10_split_and_the_selection_rate():
    rng = np.random.default_rng(0)
    ids, mask = padded_batch(rng, n=2000)
    out = mask_tokens(ids, mask, np.random.default_rng(2), vocab_size=VOCAB)
    maskable = mask & ~np.isin(ids, NEVER_MASKED)
    n = maskable.sum()
    rate = out.mask.sum() / n
    assert abs(rate - 0.15) < 4 * np.sqrt(0.15 * 0.85 / n)
    selected = out.mask.sum()
    became_mask = (out.input_ids[out.mask] == MASK_ID).mean()
    kept = (out.input_ids[out.mask] == ids[out.mask]).mean()
    # A random replacement equals the original with probability 1/35, so "kept" is 0.1 + 0.1/35.
    for observed, expected in ((became_mask, 0.8), (kept, 0.1 + 0.1 / (VOCAB - FIRST_REGULAR_ID))):
        assert abs(observed - expected) < 4 * np.sqrt(expected * (1 - expected) / selected)
    replaced = out.input_ids[out.mask & (out.input_ids != MASK_ID)]
    assert replaced.min() >= FIRST_REGULAR_ID and replaced.max() < VOCAB


def test_deterministic_for_a_seed_and_independent_of_the_data():
    ids, mask = padded_batch(np.random.default_rng(0))
    a = mask_tokens(ids, mask, np.random.default_rng(5), vocab_size=VOCAB)
    b = mask_tokens(ids, mask, np.random.default_rng(5), vocab_size=VOCAB)
    for field in ("input_ids", "targets", "mask"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    # The generator advances by the same draws whatever the tokens are.
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    mask_tokens(ids, mask, r1, vocab_size=VOCAB)
    mask_tokens(np.zeros_like(ids), np.zeros_like(mask), r2, vocab_size=VOCAB)
    assert r1.random() == r2.random()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mask_prob": 0.0}, "mask_prob"),
        ({"mask_token_prob": 0.95, "random_token_prob": 0.1}, "mask_token_prob"),
        ({"vocab_size": FIRST_REGULAR_ID}, "no regular token"),
    ],
)
def test_bad_arguments(kwargs, message):
    ids, mask = padded_batch(np.random.default_rng(0), n=2)
    with pytest.raises(ValueError, match=message):
        mask_tokens(ids, mask, np.random.default_rng(0), **{"vocab_size": VOCAB, **kwargs})


def test_shape_and_dtype_errors():
    ids, mask = padded_batch(np.random.default_rng(0), n=2)
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        mask_tokens(ids[:, :5], mask, np.random.default_rng(0), vocab_size=VOCAB)
    with pytest.raises(ValueError, match="must be bool"):
        mask_tokens(ids, mask.astype(np.int32), np.random.default_rng(0), vocab_size=VOCAB)


def config(**overrides):
    fields = dict(vocab_size=VOCAB, tasks=("a", "b"), target_mean=(1.0, -2.0), target_std=(2.0, 0.5), max_len=32)
    return ModelConfig(**{**fields, **overrides})


def collated(rng, n=6, length=12):
    ids, mask = padded_batch(rng, n=n, length=length)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": {"a": rng.normal(size=n).astype(np.float32), "b": np.arange(n, dtype=np.float32)},
    }


def test_multitask_batch_standardizes_labels_and_masks_tokens():
    source = collated(np.random.default_rng(0))
    batch = prepare_multitask_batch(source, config(), np.random.default_rng(3))
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "labels",
        "label_mask",
        "mlm_input_ids",
        "mlm_targets",
        "mlm_mask",
    }
    assert all(batch["label_mask"][task].all() for task in ("a", "b"))  # every label present
    np.testing.assert_array_equal(batch["input_ids"], source["input_ids"])
    assert batch["input_ids"].dtype == np.int32
    np.testing.assert_allclose(batch["labels"]["b"], (np.arange(6) + 2.0) / 0.5)
    assert batch["labels"]["a"].dtype == np.float32
    back = destandardize(batch["labels"], config())
    np.testing.assert_allclose(back["a"], source["labels"]["a"], rtol=1e-6)
    again = prepare_batch(source, config(), np.random.default_rng(3))
    np.testing.assert_array_equal(again["mlm_input_ids"], batch["mlm_input_ids"])


def test_multitask_batch_without_a_masked_token_head_needs_no_rng():
    batch = prepare_multitask_batch(collated(np.random.default_rng(0)), config(mlm_weight=0.0), None)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "label_mask"}
    with pytest.raises(ValueError, match="needs rng"):
        prepare_multitask_batch(collated(np.random.default_rng(0)), config(), None)


def test_single_label_array_and_missing_tasks():
    source = collated(np.random.default_rng(0))
    one = config(tasks=("y",), target_mean=(0.0,), target_std=(1.0,), mlm_weight=0.0)
    batch = prepare_multitask_batch({**source, "labels": source["labels"]["a"]}, one, None)
    np.testing.assert_array_equal(batch["labels"]["y"], source["labels"]["a"])
    with pytest.raises(KeyError, match=r"lack task\(s\) \['y'\]"):
        prepare_multitask_batch(source, one, None)
    with pytest.raises(KeyError, match="no 'labels'"):
        prepare_multitask_batch({k: v for k, v in source.items() if k != "labels"}, one, None)


def test_autoencoder_batch_is_a_shift_by_one():
    source = collated(np.random.default_rng(0))
    batch = prepare_autoencoder_batch(source, config(architecture="autoencoder"))
    np.testing.assert_array_equal(batch["decoder_input_ids"], source["input_ids"][:, :-1])
    np.testing.assert_array_equal(batch["decoder_targets"], source["input_ids"][:, 1:])
    np.testing.assert_array_equal(batch["decoder_mask"], source["attention_mask"][:, 1:])
    np.testing.assert_array_equal(batch["decoder_attention_mask"], source["attention_mask"][:, :-1])
    # The last scored target of every row is its EOS.
    last = source["attention_mask"].sum(1) - 2
    assert (batch["decoder_targets"][np.arange(6), last] == EOS_ID).all()


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda b: {**b, "input_ids": b["input_ids"][:, :1]}, ValueError, r"input_ids \(6, 1\) and attention_mask"),
        (lambda b: {**b, "input_ids": b["input_ids"] + VOCAB}, ValueError, "outside the vocabulary"),
        (lambda b: {**b, "attention_mask": b["attention_mask"].astype(np.int8)}, ValueError, "must be bool"),
        (lambda b: {"labels": b["labels"]}, KeyError, "lacks"),
    ],
)
def test_bad_collated_batches(change, error, message):
    with pytest.raises(error, match=message):
        prepare_batch(change(collated(np.random.default_rng(0))), config(), np.random.default_rng(0))


def test_a_batch_longer_than_the_position_table_is_refused():
    with pytest.raises(ValueError, match="sequence length 40 exceeds the model's max_len 32"):
        prepare_batch(collated(np.random.default_rng(0), length=40), config(), np.random.default_rng(0))
