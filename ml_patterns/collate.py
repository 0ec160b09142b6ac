"""Collate, written once for both backends: record checks, padded-length choice, labels, bucket ladders.

``torch_impl.collate`` and ``jax_impl.collate`` expose the same function::

    collate_molecules(batch, pad_token_id=0, *, pad_to_multiple_of=None, buckets=None,
                      max_length=None, truncate=True) -> dict

``batch`` is a list of records as ``ml_patterns.data.LazyDataset`` returns them
(``{"input_ids": list[int], "label": float | dict[str, float], ...}``; ``input_ids`` may also be a
1-D integer numpy array). The result, ``B`` records padded to length ``L``:

=================  ========  ======================  =====================
key                shape     torch dtype             JAX side (numpy) dtype
=================  ========  ======================  =====================
``input_ids``      [B, L]    int64                   int32
``attention_mask`` [B, L]    bool (True = token)     bool
``labels``         [B]       float32, or int64       float32, or int32
                   or a dict name -> [B] (multi-task records), names in the first record's order
``label_mask``     as ``labels``, bool: False where the label is missing (``None``, JSON ``null``)
=================  ========  ======================  =====================

A label (or, for dict labels, each name's column) whose values are all integers (Python ``int`` or
numpy integers) stays integer, so class ids reach ``F.cross_entropy`` / optax's integer-label
cross-entropy as they are: int64 on torch, int32 on JAX (JAX's default width; values outside int32
are refused on both sides so that both hold the same numbers). Any other label is float32.
A missing label (``None``: a prepared dataset writes ``null`` for a target a molecule has no value
for) is NaN in a float32 column (a column holding one is float32 even if its other values are
integers) and False in ``label_mask``; a model's batch transform (``ml_patterns.molecules.batches``)
then leaves it out of the loss.

Padding goes on the right, with ``pad_token_id`` (``ml_patterns.molecules.tokenizer.PAD_ID`` = 0 by default).
``labels`` and ``label_mask`` are absent when no record has a ``"label"``. The JAX side returns numpy arrays, ready for
``jax.device_put`` (or a sharded put); it never touches a device itself.

Padded length ``L`` (longest = the longest record, after truncation):

- neither option: ``L = longest`` (pad to longest: a new shape, so a new JAX compilation, almost
  every batch);
- ``pad_to_multiple_of=m``: ``L = ceil(longest / m) * m``;
- ``buckets=(b1 < b2 < ...)``: ``L`` = the smallest bucket ``>= longest``; a batch longer than the
  largest bucket raises ``ValueError`` rather than creating an unplanned shape. ``bucket_ladder``
  and ``dataset_buckets`` build a ladder from a dataset's sequence lengths
  (``ml_patterns.samplers.fit_buckets`` fits a shorter one to the batches a run will draw); a
  jitted step then compiles at most ``len(buckets)`` times per batch size.
- ``max_length``: records longer than it are cut to it (``truncate=True``), or raise
  (``truncate=False``). It must be a multiple of ``pad_to_multiple_of``, and no bucket may exceed it,
  so that ``L <= max_length`` always holds.

Errors (``ValueError``/``TypeError``, naming the record index): an empty batch, a record that is not
a mapping or has no ``input_ids``, empty or non-integer or negative ids (or ids past int32), some
records labelled and others not, multi-task records whose label names differ, labels that are not
finite numbers (NaN included: a missing label is ``None``), integer labels outside int32.
"""

from __future__ import annotations

import array
import dataclasses
import math
import operator
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml_patterns.molecules.prepare import read_manifest

INT32_MIN, INT32_MAX = int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max)
FLOAT32_MAX = float(np.finfo(np.float32).max)
_MISSING = object()
Labels = np.ndarray | dict[str, np.ndarray] | None


@dataclasses.dataclass(frozen=True)
class FlatBatch:
    """A checked batch, not yet padded (``collate_arrays`` pads it)."""

    ids: np.ndarray  # [sum(lengths)] int64, every record's ids one after another (truncated)
    lengths: np.ndarray  # [B] int64, each >= 1
    padded_length: int  # L
    labels: Labels  # [B] float32 or int64 (integer labels), or name -> such an array, or None
    label_mask: Labels = None  # bool, shaped as labels: False where a label is missing


def check_options(
    pad_token_id: int,
    pad_to_multiple_of: int | None,
    buckets: Sequence[int] | None,
    max_length: int | None,
) -> tuple[int, ...] | None:
    """Validates the padding options (independent of the batch); returns the buckets as a tuple."""
    _check_int("pad_token_id", pad_token_id, minimum=0)
    if pad_token_id > INT32_MAX:
        raise ValueError(f"pad_token_id {pad_token_id} does not fit int32")
    if pad_to_multiple_of is not None:
        _check_int("pad_to_multiple_of", pad_to_multiple_of, minimum=1)
    if max_length is not None:
        _check_int("max_length", max_length, minimum=1)
    if buckets is None:
        if pad_to_multiple_of is not None and max_length is not None and max_length % pad_to_multiple_of:
            raise ValueError(f"max_length {max_length} must be a multiple of pad_to_multiple_of {pad_to_multiple_of}")
        return None
    if pad_to_multiple_of is not None:
        raise ValueError("give either buckets or pad_to_multiple_of, not both")
    buckets = tuple(buckets)
    if not buckets:
        raise ValueError("buckets must hold at least one length")
    for b in buckets:
        _check_int("each bucket", b, minimum=1)
    if any(b >= c for b, c in zip(buckets, buckets[1:])):
        raise ValueError(f"buckets must be strictly increasing, got {buckets}")
    if max_length is not None and buckets[-1] > max_length:
        raise ValueError(f"buckets {buckets} go past max_length {max_length}; drop the longer ones")
    return buckets


def flatten_batch(
    batch: Sequence[Mapping[str, Any]],
    pad_token_id: int = 0,
    *,
    pad_to_multiple_of: int | None = None,
    buckets: Sequence[int] | None = None,
    max_length: int | None = None,
    truncate: bool = True,
) -> FlatBatch:
    """Checks the options and ``batch``, truncates, chooses ``L`` and converts the labels.

    The backends' ``collate_molecules`` take the same arguments and pad the result.
    """
    buckets = check_options(pad_token_id, pad_to_multiple_of, buckets, max_length)
    if isinstance(batch, Mapping) or not isinstance(batch, Sequence):
        raise TypeError(f"batch must be a list of records, got {type(batch).__name__}")
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    seqs = []
    for i, record in enumerate(batch):
        # ``type(...) is dict`` first: the ABC check alone would cost more than the padding.
        if type(record) is not dict and not isinstance(record, Mapping):
            raise TypeError(f"record {i} must be a mapping with 'input_ids', got {type(record).__name__}")
        ids = record.get("input_ids", _MISSING)
        if ids is _MISSING:
            raise ValueError(f"record {i} has no 'input_ids' (keys: {sorted(record)})")
        seqs.append(ids)
    ids, lengths = _flatten_ids(seqs)
    if max_length is not None and lengths.max() > max_length:
        too_long = int(np.argmax(lengths > max_length))
        if not truncate:
            raise ValueError(
                f"record {too_long} has {lengths[too_long]} tokens, more than max_length {max_length} "
                "(pass truncate=True to cut)"
            )
        # Position of every token within its record; keep the first max_length of each.
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        ids = ids[np.arange(len(ids)) - starts < max_length]
        lengths = np.minimum(lengths, max_length)
    labels, label_mask = _labels(batch)
    length = padded_length(int(lengths.max()), pad_to_multiple_of, buckets)
    return FlatBatch(ids, lengths, length, labels, label_mask)


def collate_arrays(
    batch: Sequence[Mapping[str, Any]],
    pad_token_id: int,
    *,
    integer_dtype: type[np.integer],
    pad_to_multiple_of: int | None = None,
    buckets: Sequence[int] | None = None,
    max_length: int | None = None,
    truncate: bool = True,
) -> dict[str, Any]:
    """The collated batch (this module's docstring) as numpy arrays, ``input_ids`` and integer labels
    of ``integer_dtype`` (the backend's integer width: int64 for torch, int32 for JAX)."""
    flat = flatten_batch(
        batch,
        pad_token_id,
        pad_to_multiple_of=pad_to_multiple_of,
        buckets=buckets,
        max_length=max_length,
        truncate=truncate,
    )
    attention_mask = np.arange(flat.padded_length) < flat.lengths[:, None]  # [B, L]
    input_ids = np.full(attention_mask.shape, pad_token_id, dtype=integer_dtype)
    # Row-major boolean assignment fills each row's first ``length`` slots with its ids, in order.
    input_ids[attention_mask] = flat.ids
    out = {"input_ids": input_ids, "attention_mask": attention_mask}

    def width(labels: np.ndarray) -> np.ndarray:  # the core checked that integer labels fit int32
        return labels.astype(integer_dtype, copy=False) if np.issubdtype(labels.dtype, np.integer) else labels

    if isinstance(flat.labels, dict):
        out["labels"] = {name: width(values) for name, values in flat.labels.items()}
    elif flat.labels is not None:
        out["labels"] = width(flat.labels)
    if flat.label_mask is not None:
        out["label_mask"] = flat.label_mask
    return out


def padded_length(longest: int, pad_to_multiple_of: int | None, buckets: tuple[int, ...] | None) -> int:
    """The ``L`` that a batch whose longest record has ``longest`` tokens is padded to."""
    if buckets is not None:
        fitting = [b for b in buckets if b >= longest]
        if not fitting:
            raise ValueError(
                f"the longest record has {longest} tokens, more than the largest bucket {buckets[-1]}; "
                "extend the buckets or set max_length"
            )
        return fitting[0]
    if pad_to_multiple_of is not None:
        return -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    return longest


def _flatten_ids(seqs: list) -> tuple[np.ndarray, np.ndarray]:
    """Every record's ids as one int64 array, and the lengths; one conversion for the whole batch."""
    try:
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    except TypeError:
        raise _first_bad_record(seqs) from None
    if lengths.min() == 0:
        raise ValueError(f"record {int(np.argmin(lengths))} has empty input_ids")
    try:
        if all(type(s) is list for s in seqs):
            # The LazyDataset case. array("q") takes exactly the objects with __index__ (int, numpy
            # integers) and refuses floats and strings, several times faster than np.array.
            buffer = array.array("q")
            for seq in seqs:
                buffer.fromlist(seq)
            ids = np.frombuffer(buffer, dtype=np.int64).copy()  # writable, as torch.from_numpy wants
        else:
            ids = np.concatenate([np.asarray(s) for s in seqs])
    except (TypeError, ValueError, OverflowError):
        ids = None
    if ids is None or ids.dtype.kind not in "iu" or ids.shape != (lengths.sum(),):
        raise _first_bad_record(seqs)
    if ids.min() < 0 or ids.max() > INT32_MAX:
        bad = int(np.argmax((ids < 0) | (ids > INT32_MAX)))
        record = int(np.searchsorted(np.cumsum(lengths), bad, side="right"))
        raise ValueError(f"record {record}: input_ids hold {ids[bad]}, outside [0, {INT32_MAX}]")
    return ids.astype(np.int64, copy=False), lengths


def _first_bad_record(seqs: list) -> Exception:
    """Finds the record that made the whole-batch conversion fail (the error path only)."""
    for i, seq in enumerate(seqs):
        try:
            values = np.asarray(seq)
        except (TypeError, ValueError) as error:
            return ValueError(f"record {i}: input_ids is not a 1-D sequence of integers ({error})")
        if values.ndim != 1:
            return ValueError(f"record {i}: input_ids must be 1-D, got shape {values.shape}")
        if len(values) and values.dtype.kind not in "iu":
            if isinstance(seq, np.ndarray):
                return TypeError(f"record {i}: input_ids have dtype {values.dtype}, not an integer type")
            for j, value in enumerate(seq):  # name the first element that is not an integer
                if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                    return TypeError(f"record {i}: input_ids[{j}] = {value!r} is not an integer")
            return TypeError(f"record {i}: input_ids have dtype {values.dtype}, not an integer type")
    return TypeError("input_ids are not all 1-D sequences of integers")


def _labels(batch: Sequence[Mapping[str, Any]]) -> tuple[Labels, Labels]:
    """``(labels, label_mask)``, each ``[B]`` or ``{name: [B]}``; ``(None, None)`` for unlabelled records."""
    labels = [record.get("label", _MISSING) for record in batch]
    n_missing = labels.count(_MISSING)
    if n_missing == len(labels):
        return None, None
    if n_missing:
        if labels[0] is _MISSING:
            first = next(i for i, label in enumerate(labels) if label is not _MISSING)
            raise ValueError(f"record {first} has a 'label' but record 0 has none: label every record or none")
        raise ValueError(
            f"record {labels.index(_MISSING)} has no 'label' but record 0 has one: label every record or none"
        )
    if not isinstance(labels[0], Mapping):
        (column,), (present,) = _label_columns([(label,) for label in labels], ("label",))
        return column, present
    names = tuple(labels[0])
    if not names:
        raise ValueError("record 0 has an empty dict of labels")
    getter = operator.itemgetter(*names)
    try:
        rows = list(map(getter, labels)) if len(names) > 1 else [(getter(label),) for label in labels]
    except (KeyError, TypeError, IndexError):
        raise _label_names_error(labels, names) from None
    # Every name of record 0 present and as many names: the same names.
    if set(map(len, labels)) != {len(names)}:
        raise _label_names_error(labels, names)
    columns, present = _label_columns(rows, tuple(f"label {name!r}" for name in names))
    return dict(zip(names, columns)), dict(zip(names, present))


def _label_names_error(labels: list, names: tuple[str, ...]) -> ValueError:
    """Names the first record whose labels differ from record 0's (the error path only)."""
    for i, label in enumerate(labels):
        if not isinstance(label, Mapping):
            return ValueError(f"record {i} has a single label but record 0 a dict of labels {list(names)}")
        if label.keys() != set(names):
            missing, extra = sorted(set(names) - set(label)), sorted(set(label) - set(names))
            return ValueError(f"record {i} has label names differing from record 0's: missing {missing}, extra {extra}")
    return ValueError("labels differ between records")


def _label_columns(rows: list[tuple], whats: tuple[str, ...]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``rows[i][k]`` = record i's label k (described by ``whats[k]``) -> K contiguous ``[B]`` arrays:
    int64 for a column of integers, float32 otherwise (NaN where the label is ``None``: missing), and
    K bool ``[B]`` masks (False where missing); refuses what is not a finite real number."""
    table = np.array(rows)  # one conversion; strings, None, dicts leave it non-numeric
    present = np.ones(table.shape, dtype=bool)
    if table.dtype == object and table.shape == (len(rows), len(whats)):  # the rare path: missing labels
        present = np.array([[value is not None for value in row] for row in rows], dtype=bool)
        table = np.array([[np.nan if value is None else value for value in row] for row in rows])
    if table.shape != (len(rows), len(whats)) or table.dtype.kind not in "iuf":
        raise _label_type_error(rows, whats)
    if table.dtype.kind in "iu":
        integer = [True] * len(whats)
    else:  # a float table may still hold integer columns beside float ones; short-circuits on a float
        integer = [all(_is_integer(row[k]) for row in rows) for k in range(len(whats))]  # None is not
    columns = []
    for k, is_integer in enumerate(integer):
        column = table[:, k]
        if is_integer:
            # Exact in the table: float64 holds every integer below 2**53, and larger ones fail here.
            in_range = (column >= INT32_MIN) & (column <= INT32_MAX)
            if not in_range.all():
                i = int(np.argmin(in_range))
                raise ValueError(
                    f"record {i}: {whats[k]} = {rows[i][k]!r} is an integer outside int32 [{INT32_MIN}, {INT32_MAX}]"
                )
            columns.append(np.ascontiguousarray(column, dtype=np.int64))
            continue
        # One comparison catches NaN, infinities and values that float32 cannot hold.
        representable = (np.abs(column) <= FLOAT32_MAX) | ~present[:, k]
        if not representable.all():
            i = int(np.argmin(representable))
            raise ValueError(f"record {i}: {whats[k]} = {rows[i][k]!r} is not a finite float32")
        columns.append(np.ascontiguousarray(column, dtype=np.float32))
    return columns, [np.ascontiguousarray(present[:, k]) for k in range(len(whats))]


def _is_integer(value: Any) -> bool:
    return type(value) is int or isinstance(value, np.integer)  # bool is refused elsewhere


def _label_type_error(rows: list[tuple], whats: tuple[str, ...]) -> Exception:
    """Names the first label that is not a number (the error path only)."""
    for i, row in enumerate(rows):
        for what, value in zip(whats, row):
            if isinstance(value, Mapping):
                return ValueError(f"record {i} has a dict of labels but record 0 a single label")
            if value is None:  # a missing label
                continue
            if isinstance(value, (str, bytes)) or not isinstance(value, (int, float, np.integer, np.floating)):
                return TypeError(f"record {i}: {what} = {value!r} is not a number")
    return TypeError(f"labels are not all numbers: {', '.join(whats)}")


def bucket_ladder(min_length: int, max_length: int, *, max_buckets: int = 8, multiple_of: int = 8) -> tuple[int, ...]:
    """A geometric ladder of at most ``max_buckets`` lengths covering ``[min_length, max_length]``.

    Geometric spacing bounds the padding of every batch by the same ratio (about
    ``(max/min) ** (1 / (max_buckets - 1))``) whatever its longest record: random batches of
    molecules mostly land in the upper buckets, which is where a fine grid matters. Each length is
    rounded up to ``multiple_of`` (hardware likes multiples of 8); the last is ``max_length`` rounded up.
    """
    _check_int("min_length", min_length, minimum=1)
    _check_int("max_length", max_length, minimum=min_length)
    _check_int("max_buckets", max_buckets, minimum=1)
    _check_int("multiple_of", multiple_of, minimum=1)

    def round_up(n: float) -> int:
        return -(-math.ceil(n - 1e-9) // multiple_of) * multiple_of

    low, high = round_up(min_length), round_up(max_length)
    if max_buckets == 1 or low == high:
        return (high,)
    ratio = (high / low) ** (1 / (max_buckets - 1))
    return tuple(sorted({round_up(low * ratio**k) for k in range(max_buckets - 1)} | {high}))


def dataset_buckets(root: str | os.PathLike, *, max_buckets: int = 8, multiple_of: int = 8) -> tuple[int, ...]:
    """``bucket_ladder`` over the sequence lengths recorded in a prepared dataset's manifest."""
    lengths = read_manifest(Path(root)).get("sequence_length")
    if not isinstance(lengths, Mapping) or not {"min", "max"} <= set(lengths):
        raise ValueError(
            f"{Path(root) / 'manifest.json'} has no sequence_length {{min, max}}: re-run `ml-patterns prepare`"
        )
    return bucket_ladder(lengths["min"], lengths["max"], max_buckets=max_buckets, multiple_of=multiple_of)


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
