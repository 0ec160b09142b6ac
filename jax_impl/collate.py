"""Collate, JAX side: the contract (arguments, shapes, dtypes, padded lengths, errors) is
``ml_patterns.collate``'s docstring. Returns host numpy arrays: the caller decides where they go
(``jax.device_put``, a sharding), and collate can run in a prefetch thread without touching a device."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ml_patterns.collate import flatten_batch
from ml_patterns.molecules.tokenizer import PAD_ID


def collate_molecules(
    batch: Sequence[Mapping[str, Any]],
    pad_token_id: int = PAD_ID,
    *,
    pad_to_multiple_of: int | None = None,
    buckets: Sequence[int] | None = None,
    max_length: int | None = None,
    truncate: bool = True,
) -> dict[str, Any]:
    """Records -> ``{"input_ids": int32 [B, L], "attention_mask": bool [B, L],
    "labels": float32 | int32 [B] | dict}``."""
    flat = flatten_batch(
        batch,
        pad_token_id,
        pad_to_multiple_of=pad_to_multiple_of,
        buckets=buckets,
        max_length=max_length,
        truncate=truncate,
    )
    attention_mask = np.arange(flat.padded_length) < flat.lengths[:, None]
    input_ids = np.full(attention_mask.shape, pad_token_id, dtype=np.int32)
    # Row-major boolean assignment fills each row's first ``length`` slots with its ids, in order.
    input_ids[attention_mask] = flat.ids
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if isinstance(flat.labels, dict):
        out["labels"] = {name: _jax_width(values) for name, values in flat.labels.items()}
    elif flat.labels is not None:
        out["labels"] = _jax_width(flat.labels)
    return out


def _jax_width(labels: np.ndarray) -> np.ndarray:
    # Integer labels as int32, JAX's default integer (the core checked that they fit).
    return labels.astype(np.int32) if labels.dtype == np.int64 else labels
