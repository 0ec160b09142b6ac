"""Crash-safe file writes and checksums, shared by dataset preparation and checkpoints.

Every write goes to a temporary file in the destination's directory, is flushed and fsynced, then
renamed over the destination: readers see the old file or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def _fsync_directory(directory: Path) -> None:
    # The rename itself lives in the directory entry; without this a power loss can undo it.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Calls ``write(file)`` on a temporary file, then atomically replaces ``path`` with it."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def staged_directory(destination: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty staging directory that replaces ``destination`` only if the block succeeds.

    The staging directory is a sibling of ``destination`` (same filesystem, so the final rename is
    atomic). An exception or a kill inside the block leaves ``destination`` untouched; the staging
    directory's name starts with a dot and ends in ``.partial`` so it never passes for a dataset.
    """
    destination = Path(destination)
    if destination.exists() and not overwrite:
        raise FileExistsError(f"{destination} already exists (pass overwrite=True to replace it)")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if destination.exists():
        # Move the old copy aside first: two renames, each atomic; the old data is deleted only once
        # the new data is in place.
        retired = destination.with_name(f".{destination.name}.{os.getpid()}.old")
        os.replace(destination, retired)
        os.replace(staging, destination)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, destination)
    _fsync_directory(destination.parent)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
