"""Lazy on-disk dataset shared by both backends (the sampler that orders it: ``ml_patterns.samplers``)."""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

Record = dict[str, Any]


class DatasetError(ValueError):
    """A prepared dataset is malformed; the message names the file and the index involved."""


class LazyDataset:
    """Random access to records of a prepared dataset (``ml-patterns prepare``), loaded on access.

    Construction reads ``root/index.json`` only. ``dataset[i]`` opens the shard named by entry i (a
    few shards stay open, least recently used closed first), seeks to the record's line and parses
    that line alone: memory stays flat however large the dataset.

    Args:
        root: the dataset directory.
        transform: optional ``record -> record`` applied on every access.
        split: ``"train"``, ``"val"`` or ``"test"`` to see one split (entries whose ``"split"``
            matches, in index order); ``None`` for every entry.
        max_open_shards: how many shard files stay open at once.

    ``dataset[i]`` returns ``{"input_ids": list[int], "label": float | dict[str, float],
    "smiles": str}`` (then whatever ``transform`` makes of it).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[Record], Record] | None = None,
        *,
        split: str | None = None,
        max_open_shards: int = 8,
    ):
        self.root = Path(root)
        self.transform = transform
        self.split = split
        self.max_open_shards = max_open_shards
        entries = _read_index(self.root / "index.json")
        if split is not None:
            known = sorted({e.get("split") for e in entries if isinstance(e.get("split"), str)})
            if split not in known:
                raise DatasetError(f"{self.root / 'index.json'}: no entry has split {split!r}; splits present: {known}")
            entries = [e for e in entries if e.get("split") == split]
        self._entries = entries
        self._resolved: dict[str, Path] = {}
        self._shards: collections.OrderedDict[Path, _Shard] = collections.OrderedDict()
        # Line offsets outlive the open file (8 bytes a record), so reopening an evicted shard does
        # not rescan it.
        self._offsets: dict[Path, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, idx: int) -> Record:
        if isinstance(idx, (bool, np.bool_)) or not isinstance(idx, (int, np.integer)):
            raise TypeError(f"dataset index must be an integer, got {type(idx).__name__}")
        if not 0 <= idx < len(self._entries):
            # Negative indices are refused rather than wrapped: a sampler producing -1 is a bug.
            raise IndexError(f"index {idx} out of range for dataset {self.root} of {len(self._entries)} records")
        entry = self._entries[idx]
        path = self._entry_path(idx, entry)
        row = entry.get("row", 0)
        if isinstance(row, bool) or not isinstance(row, int) or row < 0:
            raise DatasetError(f"{self.root / 'index.json'}: entry {idx} has an invalid row {row!r}")
        record = self._shard(path, idx).read(row, idx)
        return self.transform(record) if self.transform is not None else record

    def __iter__(self) -> Iterator[Record]:
        for idx in range(len(self)):
            yield self[idx]

    def _entry_path(self, idx: int, entry: dict) -> Path:
        relative = entry.get("file")
        if not isinstance(relative, str) or not relative:
            raise DatasetError(f"{self.root / 'index.json'}: entry {idx} has no 'file' string")
        resolved = self._resolved.get(relative)
        if resolved is None:
            resolved = _resolve_inside(self.root, relative, idx)
            self._resolved[relative] = resolved
        return resolved

    def _shard(self, path: Path, idx: int) -> _Shard:
        shard = self._shards.get(path)
        if shard is None:
            shard = _Shard(path, idx, self._offsets.get(path))
            self._offsets[path] = shard.offsets
            self._shards[path] = shard
            if len(self._shards) > self.max_open_shards:
                self._shards.popitem(last=False)[1].close()
        else:
            self._shards.move_to_end(path)
        return shard

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()

    def __getstate__(self) -> dict:
        # Open files don't cross process boundaries (DataLoader workers): each process reopens.
        state = self.__dict__.copy()
        state["_shards"] = collections.OrderedDict()
        return state

    def __del__(self) -> None:
        if "_shards" in self.__dict__:  # construction may have failed before the cache existed
            self.close()


def _read_index(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: is {path.parent} a dataset written by `ml-patterns prepare`?") from None
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(entries, list):
        raise DatasetError(f"{path} must hold a JSON list of entries, got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DatasetError(f"{path}: entry {i} must be an object, got {type(entry).__name__}")
    return entries


def _resolve_inside(root: Path, relative: str, idx: int) -> Path:
    """Resolves an index entry's path, refusing any that leads outside ``root`` (symlinks included)."""
    if os.path.isabs(relative) or ".." in Path(relative).parts:
        raise DatasetError(f"{root / 'index.json'}: entry {idx} has path {relative!r} that escapes {root}")
    real_root = root.resolve()
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(real_root):
        raise DatasetError(
            f"{root / 'index.json'}: entry {idx} has path {relative!r} that resolves to {resolved}, outside {root}"
        )
    return resolved


class _Shard:
    """One open JSON-lines shard and the byte offset of each of its lines."""

    def __init__(self, path: Path, idx: int, offsets: np.ndarray | None = None):
        self.path = path
        try:
            self.handle = open(path, "rb")
        except FileNotFoundError:
            raise FileNotFoundError(f"shard {path} (needed by entry {idx}) does not exist") from None
        if offsets is None:
            # One sequential pass over the file; afterwards each read is a seek plus one line.
            lengths = [len(line) for line in self.handle]
            offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        self.offsets = offsets

    def read(self, row: int, idx: int) -> Record:
        if row >= len(self.offsets) - 1:
            raise DatasetError(f"entry {idx}: row {row} out of range, shard {self.path} has {len(self.offsets) - 1} rows")
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        self.handle.seek(start)
        line = self.handle.read(end - start)
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DatasetError(f"entry {idx}: row {row} of shard {self.path} is not valid JSON: {error}") from None
        if not isinstance(record, dict) or "input_ids" not in record:
            raise DatasetError(f"entry {idx}: row {row} of shard {self.path} is not a record with 'input_ids'")
        return record

    def close(self) -> None:
        self.handle.close()


class Subset:
    """The records of ``dataset`` at ``indices``, in that order (e.g. the first 500 molecules)."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        bad = [i for i in self.indices if not 0 <= i < len(dataset)]
        if bad:
            raise IndexError(f"Subset indices {bad[:5]} out of range for a dataset of {len(dataset)} records")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, idx: int) -> Record:
        if not 0 <= idx < len(self.indices):
            raise IndexError(f"index {idx} out of range for a subset of {len(self.indices)} records")
        return self.dataset[self.indices[idx]]
