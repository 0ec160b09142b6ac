"""Crash-safe file writes and checksums, shared by dataset preparation and checkpoints.

Every write goes to a temporary file in the destination's directory, is flushed and fsynced, then
renamed over the destination: readers see the old file or the new one, never half of either.
Files and directories are created with the user's umask (0644/0755 by default), like any other
program's output: a team's shared ``data/`` stays readable.

A directory output (a dataset, a training checkpoint) is built in a hidden staging directory next
to it and renamed into place (``staged_directory``). What may be replaced is checked first
(``check_destination``): never the working directory or a directory above it, never a file, never
a directory holding a path the caller protects (the source of the data), and, where the caller
says how to recognise its own output, never a directory it did not write.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ml_patterns.errors import DestinationError, DestinationExistsError, UsageError


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control and format characters from data (an escape
    sequence in a SMILES string, a right-to-left override) written as Python escapes (``\\x1b``)."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _fsync_directory(directory: Path) -> None:
    # The rename itself lives in the directory entry; without this a power loss can undo it.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unique_sibling(directory: Path, prefix: str, suffix: str, create: Callable[[Path], None]) -> Path:
    # tempfile.mkstemp/mkdtemp create 0600/0700 whatever the umask; os.open/os.mkdir with 0666/0777
    # let the kernel apply the umask, and O_EXCL/mkdir keep the name ours alone.
    for _ in range(100):
        candidate = directory / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary name {prefix}*{suffix} in {directory}")


class DiskFullError(DestinationError):
    """The disk (or the user's quota) filled up while writing ``path``: the previous copy of the file
    is kept; nothing half-written is left under its name."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(f"disk full at {path}: nothing was replaced, the previous copy is kept; free some space")


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def disk_full_as_error(path: Path) -> Iterator[None]:
    """Turns a full disk (``ENOSPC``, ``EDQUOT``) while writing ``path`` into ``DiskFullError`` (a user
    error: one line, no traceback); any other ``OSError`` passes as it is."""
    try:
        yield
    except DiskFullError as error:
        if error.path != path:  # a file inside ``path`` (a staging directory's): name what the user named
            raise DiskFullError(path) from None
        raise
    except OSError as error:
        if error.errno in _NO_SPACE:
            raise DiskFullError(path) from None
        raise


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Calls ``write(file)`` on a temporary file, then atomically replaces ``path`` with it; a full
    disk raises ``DiskFullError`` and leaves ``path`` as it was."""
    path = Path(path)
    descriptor: list[int] = []

    def create(candidate: Path) -> None:
        descriptor.append(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))

    with disk_full_as_error(path):
        tmp_name = _unique_sibling(path.parent, f".{path.name}.", ".tmp", create)
        try:
            with os.fdopen(descriptor[0], "wb") as handle:
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


def _absolute(path: Path) -> Path:
    """``path`` made absolute with its parent's symlinks resolved, its last component kept as is.

    Renaming acts on the last component itself (a symlink is moved, not its target), while the
    parent decides where that is: ``/link/x`` with ``/link -> /work`` is ``/work/x``.
    """
    path = Path(os.path.abspath(path))
    return path if path.parent == path else Path(os.path.realpath(path.parent)) / path.name


def check_destination(
    destination: Path,
    *,
    overwrite: bool = False,
    foreign: Callable[[Path], str | None] | None = None,
    protect: Iterable[Path] = (),
) -> Path:
    """Raises ``DestinationError`` unless ``staged_directory`` may write ``destination``; returns its
    absolute path.

    Refused: the filesystem root, the working directory or any directory above it, a path that is or
    holds one of ``protect`` (e.g. the source file of a dataset), an existing destination unless
    ``overwrite`` (``DestinationExistsError``), and, even with ``overwrite``, an existing file or
    symlink, or a directory for which ``foreign(directory)`` returns a reason (it returns ``None``
    for a directory the caller wrote itself).
    """
    given = destination
    destination = _absolute(destination)
    if destination.parent == destination:
        raise DestinationError(f"refusing to write to {given}: it is the filesystem root")
    cwd = Path.cwd().resolve()
    if destination == cwd or destination in cwd.parents:
        raise DestinationError(
            f"refusing to write to {given}: it is the working directory or holds it; name a new directory"
        )
    for kept in protect:
        kept_path = _absolute(kept)
        if kept_path == destination or destination in kept_path.parents:
            raise DestinationError(f"refusing to write to {given}: it holds {kept}, which must be kept")
    if not os.path.lexists(destination):
        return destination
    if not overwrite:
        raise DestinationExistsError(given)
    if destination.is_symlink() or not destination.is_dir():
        kind = "a symbolic link" if destination.is_symlink() else "not a directory"
        raise DestinationError(f"refusing to replace {given}: it is {kind}; remove it yourself or choose another path")
    reason = foreign(destination) if foreign is not None else None
    if reason:
        raise DestinationError(f"refusing to replace {given}: {reason}")
    return destination


@contextlib.contextmanager
def staged_directory(
    destination: Path,
    overwrite: bool = False,
    *,
    foreign: Callable[[Path], str | None] | None = None,
    protect: Iterable[Path] = (),
) -> Iterator[Path]:
    """Yields an empty staging directory that replaces ``destination`` only if the block succeeds.

    ``destination`` is checked first and again before publishing (``check_destination``, with the
    same arguments). The staging directory is a sibling of ``destination`` (same filesystem, so the
    final rename is atomic), named ``.<name>.<host>.<pid>-<random>.partial`` so it never passes for the
    output and a later run can tell it was abandoned: staging directories of runs no longer alive
    are removed, and an interrupted replacement's old copy is removed or reported
    (``clean_leftovers``). An exception, or a kill, inside the block leaves ``destination``
    untouched; directories created for it (missing parents) are removed again on failure.
    """
    protect = tuple(protect)
    checked = check_destination(destination, overwrite=overwrite, foreign=foreign, protect=protect)
    created = _make_parents(checked.parent, destination)
    try:
        clean_leftovers(checked)
        staging = _unique_sibling(
            checked.parent, f".{checked.name}.{_owner()}-", ".partial", lambda candidate: os.mkdir(candidate, 0o777)
        )
    except OSError as error:
        _remove_empty(created)
        raise DestinationError(f"cannot create {destination}: {error.strerror or error}") from error
    try:
        with disk_full_as_error(destination):
            yield staging
        # Checked again: the destination may have appeared, or changed, while we were writing.
        check_destination(destination, overwrite=overwrite, foreign=foreign, protect=protect)
        _publish(staging, checked)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        raise
    _fsync_directory(checked.parent)


def _make_parents(parent: Path, destination: Path) -> list[Path]:
    """Creates ``parent`` and the missing directories above it; returns those created, deepest first."""
    missing = [p for p in (parent, *parent.parents) if not os.path.lexists(p)]
    created = []
    try:
        for directory in reversed(missing):
            os.mkdir(directory, 0o777)
            created.insert(0, directory)
    except OSError as error:
        _remove_empty(created)
        raise DestinationError(f"cannot create {destination}: {error.strerror or error} ({directory})") from error
    return created


def _remove_empty(directories: list[Path]) -> None:
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


def _publish(staging: Path, destination: Path) -> None:
    if not os.path.lexists(destination):
        os.replace(staging, destination)
        return
    # Move the old copy aside first: two renames, each atomic; the old data is deleted only once the
    # new data is in place, and put back if the second rename fails.
    retired = destination.with_name(f".{destination.name}.{_owner()}.old")
    os.replace(destination, retired)
    try:
        os.replace(staging, destination)
    except BaseException:
        os.replace(retired, destination)
        raise
    _remove_tree(retired)


def _remove_tree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except OSError as error:
        warnings.warn(f"could not remove {path} ({error.strerror or error}); delete it yourself", stacklevel=3)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "localhost"


def _owner() -> str:
    """``<host>.<pid>``: which process wrote a staging name, so that a later run can tell it died."""
    return f"{_host()}.{os.getpid()}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user
        return True
    return True


def clean_leftovers(destination: Path) -> None:
    """Removes what killed runs writing ``destination`` left next to it, or warns about it.

    A staging directory (``.<name>.<host>.<pid>-<random>.partial``) of this machine whose process is
    gone is removed; other machines' (a shared filesystem) are left alone. An old copy set aside
    during a replacement (``.<name>.<host>.<pid>.old``, or ``.<name>.<pid>.old`` as older versions
    named it) is removed once ``destination`` exists again; if it does not, the old copy is the only
    one left and is reported, not touched. Staging directories of older versions
    (``.<name>.<random>.partial``, no owner) are reported.
    """
    destination = _absolute(destination)
    name, host = re.escape(destination.name), re.escape(_host())
    staging = re.compile(rf"\.{name}\.{host}\.(\d+)-[0-9a-f]+\.partial")
    retired = re.compile(rf"\.{name}\.(?:{host}\.)?(\d+)\.old")
    legacy = re.compile(rf"\.{name}\.[a-z0-9_]{{8}}\.partial")
    try:
        siblings = sorted(destination.parent.iterdir())
    except FileNotFoundError:
        return
    for sibling in siblings:
        if match := staging.fullmatch(sibling.name):
            if not _alive(int(match[1])):
                _remove_tree(sibling)
        elif legacy.fullmatch(sibling.name):
            warnings.warn(
                f"{sibling} is left over from an interrupted run writing {destination}; delete it", stacklevel=3
            )
        elif (match := retired.fullmatch(sibling.name)) and not _alive(int(match[1])):
            if os.path.lexists(destination):
                _remove_tree(sibling)
            else:
                warnings.warn(
                    f"{sibling} holds the previous {destination.name} from an interrupted replacement; "
                    f"rename it to {destination} to keep it, or delete it",
                    stacklevel=3,
                )


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def private_directory(directory: str | os.PathLike, what: str) -> Path:
    """``directory``, created (mode 0700) if missing, refused unless this user owns it and no one
    else may write to it: what is read from a cache of programs runs as is.

    ``what`` names it in the error (e.g. "the compile cache"). Raises ``UsageError``.
    """
    path = Path(directory).expanduser()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UsageError(
            f"{what} {path} is writable by another user: a program read from it would run as is; make it "
            "yours alone (chmod 700) or use another directory"
        )
    return path
