"""Collate, torch side: the contract (arguments, shapes, dtypes, padded lengths, errors) is
``ml_patterns.collate``'s docstring. Use as ``DataLoader(..., collate_fn=collate_molecules)`` (or a
``functools.partial`` of it with the padding options)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

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
    """Records -> ``{"input_ids": int64 [B, L], "attention_mask": bool [B, L],
    "labels": float32 | int64 [B] | dict}``."""
    flat = flatten_batch(
        batch,
        pad_token_id,
        pad_to_multiple_of=pad_to_multiple_of,
        buckets=buckets,
        max_length=max_length,
        truncate=truncate,
    )
    lengths = torch.from_numpy(flat.lengths)
    attention_mask = torch.arange(flat.padded_length) < lengths.unsqueeze(1)  # [B, L]
    # One masked_scatter over the whole batch: pad_sequence copies record by record (~4 us each).
    input_ids = torch.full(attention_mask.shape, pad_token_id, dtype=torch.int64)
    input_ids.masked_scatter_(attention_mask, torch.from_numpy(flat.ids))
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if isinstance(flat.labels, dict):
        out["labels"] = {name: torch.from_numpy(values) for name, values in flat.labels.items()}
    elif flat.labels is not None:
        out["labels"] = torch.from_numpy(flat.labels)
    return out
