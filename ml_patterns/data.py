"""Lazy on-disk dataset shared by both backends (the sampler that orders it: ``ml_patterns.samplers``)."""

from __future__ import annotations

import collections
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

Record = Any

# How many shards' resolved paths and line offsets are remembered after they are closed: bounded,
# so memory stays flat however many distinct files an index names.
_REMEMBERED_SHARDS = 64


class DatasetError(ValueError):
    """A dataset is malformed; the message names the file and the index entry involved."""


class LazyDataset:
    """The seed's lazy dataset: ``data_path/index.json`` lists the items, each loaded on access.

    Construction reads ``index.json`` only: a JSON list of entries (any layout, pretty-printed or
    not), each an object with a ``"file"`` path relative to ``data_path``. ``dataset[i]`` loads entry
    i, applies ``transform`` if given, and returns the result:

    - an entry with a ``"row"`` is line ``row`` of a JSON-lines shard (what ``ml-patterns prepare``
      writes: ``{"input_ids": list[int], "label": float | dict[str, float], "smiles": str}``). The
      fast path: a few shards stay open (least recently used closed first), each line's offset is
      found once, and an access is a seek plus one line parsed.
    - an entry without is one item per file, read by ``_load_file(path)``, which a subclass
      overrides (the seed's extension point); the built-in one goes by extension: ``.json`` /
      ``.jsonl`` (the parsed JSON), ``.npy`` (the array), ``.npz`` (``{name: array}``); pickled
      objects are refused (``allow_pickle=False``).

    Records need not be molecules: whatever the file holds is the item. Memory stays flat however
    many items are read (the caches are bounded). Only regular files are opened: a FIFO, device,
    socket or directory in place of a file is refused with its path (opening a FIFO would block).
    Paths leading outside ``data_path`` (``..``, absolute, or through a symlink) are refused.

    Args:
        data_path: the dataset directory.
        transform: optional ``item -> item`` applied on every access.
        split: ``"train"``, ``"val"`` or ``"test"`` to see one split (entries whose ``"split"``
            matches, in index order); ``None`` for every entry.
        max_open_shards: how many shard files stay open at once.
    """

    def __init__(
        self,
        data_path: str | os.PathLike,
        transform: Callable[[Record], Record] | None = None,
        *,
        split: str | None = None,
        max_open_shards: int = 8,
    ):
        self.data_path = Path(data_path)
        self.transform = transform
        self.split = split
        self.max_open_shards = max_open_shards
        self.index = _read_index(self.data_path / "index.json")
        # Resolved once: resolving walks every component of the path, a cost per access otherwise.
        self._real_root = self.data_path.resolve()
        # Which directory the index was read from: a dataset replaced under a live reader (prepared
        # again with overwrite) is detected when a file is opened, instead of serving the new
        # files' records at the old index's positions.
        self._identity = _identity(self.data_path)
        if split is not None:
            known = sorted({e.get("split") for e in self.index if isinstance(e.get("split"), str)})
            if split not in known:
                raise DatasetError(f"{self._index_path}: no entry has split {split!r}; splits present: {known}")
            # An entry without a split would silently vanish from every split.
            unsplit = [i for i, e in enumerate(self.index) if not isinstance(e.get("split"), str)]
            if unsplit:
                raise DatasetError(
                    f"{self._index_path}: entry {unsplit[0]} has no 'split' ({len(unsplit)} such "
                    f"entries), so split={split!r} cannot tell where they belong"
                )
            self.index = [e for e in self.index if e.get("split") == split]
        self._shards: collections.OrderedDict[str, _Shard] = collections.OrderedDict()  # by index name
        # Resolved path and line offsets (8 bytes a record) of closed shards, so reopening one does
        # not rescan it; bounded, least recently used dropped first.
        self._shard_info: collections.OrderedDict[str, tuple[Path, np.ndarray | None]] = collections.OrderedDict()

    @property
    def _index_path(self) -> Path:
        return self.data_path / "index.json"

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: int) -> Record:
        if isinstance(idx, (bool, np.bool_)) or not isinstance(idx, (int, np.integer)):
            raise TypeError(f"dataset index must be an integer, got {type(idx).__name__}")
        if not 0 <= idx < len(self.index):
            # Negative indices are refused rather than wrapped: a sampler producing -1 is a bug.
            raise IndexError(f"index {idx} out of range for dataset {self.data_path} of {len(self.index)} records")
        entry = self.index[idx]
        relative = entry.get("file")
        if not isinstance(relative, str) or not relative:
            raise DatasetError(f"{self._index_path}: entry {idx} has no 'file' string")
        if "row" in entry:
            row = entry["row"]
            if isinstance(row, bool) or not isinstance(row, int) or row < 0:
                raise DatasetError(f"{self._index_path}: entry {idx} has an invalid row {row!r}")
            record = self._shard(relative, idx).read(row, idx)
        else:
            try:
                path = _resolve_inside(self.data_path, relative, idx, self._real_root)
                _check_regular(path, idx)
                try:
                    record = self._load_file(path)
                except DatasetError as error:
                    raise DatasetError(f"entry {idx}: {error}") from None
            except (OSError, DatasetError):
                self._check_unchanged()  # a dataset replaced under the reader explains the failure
                raise
            self._check_unchanged()
        return self.transform(record) if self.transform is not None else record

    def __iter__(self) -> Iterator[Record]:
        for idx in range(len(self)):
            yield self[idx]

    def _load_file(self, path: Path) -> Record:
        """One item from its own file (entries without ``"row"``); override for other formats."""
        suffix = path.suffix.lower()
        if suffix in (".json", ".jsonl"):
            try:
                return json.loads(path.read_bytes())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise DatasetError(f"{path} is not valid JSON: {error}") from None
        if suffix in (".npy", ".npz"):
            try:
                if suffix == ".npy":
                    return np.load(path, allow_pickle=False)
                with np.load(path, allow_pickle=False) as arrays:
                    return {name: arrays[name] for name in arrays.files}
            except (ValueError, OSError, EOFError) as error:  # object arrays, corrupt or truncated files
                raise DatasetError(f"{path} cannot be read as {suffix}: {error}") from None
        raise DatasetError(
            f"{path}: no built-in loader for {suffix or 'extensionless'!r} files (.json, .jsonl, .npy, .npz); "
            "subclass LazyDataset and override _load_file(path)"
        )

    def _shard(self, relative: str, idx: int) -> _Shard:
        shard = self._shards.get(relative)
        if shard is not None:  # the common case: one lookup
            self._shards.move_to_end(relative)
            return shard
        path, offsets = self._shard_info.pop(relative, (None, None))
        try:
            shard = _Shard(path or _resolve_inside(self.data_path, relative, idx, self._real_root), idx, offsets)
        except (OSError, DatasetError):
            self._check_unchanged()  # a dataset replaced under the reader explains the failure
            raise
        try:
            # After the open: a file opened while the directory was still the one indexed is its file.
            self._check_unchanged()
        except DatasetError:
            shard.close()
            raise
        self._shards[relative] = shard
        if len(self._shards) > self.max_open_shards:
            closed_name, closed = self._shards.popitem(last=False)
            closed.close()
            self._remember(closed_name, closed)
        return shard

    def _check_unchanged(self) -> None:
        if _identity(self.data_path) != self._identity:
            raise DatasetError(
                f"{self.data_path} was replaced while being read (prepared again?): its index no longer "
                "matches its files; open the dataset again"
            )

    def _remember(self, relative: str, shard: _Shard) -> None:
        self._shard_info[relative] = (shard.path, shard.offsets)
        if len(self._shard_info) > _REMEMBERED_SHARDS:
            self._shard_info.popitem(last=False)

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()

    def __getstate__(self) -> dict:
        # Open files don't cross process boundaries (DataLoader workers): each process reopens,
        # with the offsets already found.
        state = self.__dict__.copy()
        state["_shards"] = collections.OrderedDict()
        state["_shard_info"] = collections.OrderedDict(self._shard_info)
        state["_shard_info"].update((name, (shard.path, shard.offsets)) for name, shard in self._shards.items())
        return state

    def __del__(self) -> None:
        if "_shards" in self.__dict__:  # construction may have failed before the cache existed
            self.close()


def _read_index(path: Path) -> list[dict]:
    try:
        _check_regular(path, None)
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} not found: is {path.parent} a dataset (an index.json listing its files)?"
        ) from None
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


def _identity(directory: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def _resolve_inside(root: Path, relative: str, idx: int, real_root: Path) -> Path:
    """Resolves an index entry's path, refusing any that leads outside ``root`` (``real_root``: it
    resolved; symlinks included)."""
    if os.path.isabs(relative) or ".." in Path(relative).parts:
        raise DatasetError(f"{root / 'index.json'}: entry {idx} has path {relative!r} that escapes {root}")
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(real_root):
        raise DatasetError(
            f"{root / 'index.json'}: entry {idx} has path {relative!r} that resolves to {resolved}, outside {root}"
        )
    return resolved


_NOT_REGULAR = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_regular(path: Path, idx: int | None) -> None:
    """Refuses what is not a regular file before anything opens it (a FIFO would block ``open``);
    ``idx``: the index entry that needs the file (None: the index itself)."""
    needed_by = "the dataset" if idx is None else f"entry {idx}"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} (needed by {needed_by}) does not exist") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")
        raise DatasetError(f"{needed_by}: {path} is {kind}, not a regular file; only regular files are read as data")


class _Shard:
    """One open JSON-lines shard and the byte offset of each of its lines."""

    def __init__(self, path: Path, idx: int, offsets: np.ndarray | None = None):
        self.path = path
        _check_regular(path, idx)
        self.handle = open(path, "rb")
        if offsets is None:
            # One sequential pass over the file; afterwards each read is a seek plus one line.
            lengths = [len(line) for line in self.handle]
            offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        self.offsets = offsets

    def read(self, row: int, idx: int) -> Record:
        if row >= len(self.offsets) - 1:
            raise DatasetError(
                f"entry {idx}: row {row} out of range, shard {self.path} has {len(self.offsets) - 1} rows"
            )
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        self.handle.seek(start)
        line = self.handle.read(end - start)
        try:
            return json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DatasetError(f"entry {idx}: row {row} of shard {self.path} is not valid JSON: {error}") from None

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
