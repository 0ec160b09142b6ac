"""Collate, JAX side: the contract (arguments, shapes, dtypes, padded lengths, errors) is
``ml_patterns.collate``'s docstring. Returns host numpy arrays: the caller decides where they go
(``jax.device_put``, a sharding), and collate can run in a prefetch thread without touching a device."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ml_patterns.collate import collate_arrays
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
    "labels": float32 | int32 [B] | dict}`` (int32: JAX's default integer)."""
    options = {"pad_to_multiple_of": pad_to_multiple_of, "buckets": buckets, "max_length": max_length}
    return collate_arrays(batch, pad_token_id, integer_dtype=np.int32, truncate=truncate, **options)
