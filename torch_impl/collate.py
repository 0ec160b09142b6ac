"""Collate, torch side: the contract (arguments, shapes, dtypes, padded lengths, errors) is
``ml_patterns.collate``'s docstring. Use as ``DataLoader(..., collate_fn=collate_molecules)`` (or a
``functools.partial`` of it with the padding options)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

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
    """Records -> ``{"input_ids": int64 [B, L], "attention_mask": bool [B, L],
    "labels": float32 | int64 [B] | dict}`` as tensors (sharing the collated arrays' memory)."""
    options = {"pad_to_multiple_of": pad_to_multiple_of, "buckets": buckets, "max_length": max_length}
    arrays = collate_arrays(batch, pad_token_id, integer_dtype=np.int64, truncate=truncate, **options)
    return _tensors(arrays)


def _tensors(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {key: _tensors(value) for key, value in tree.items()}
    return torch.from_numpy(tree)
