"""Who owns an output folder: a marker of its kind, and a lock while a writer is alive.

A writer replaces or deletes only what it wrote. Every output folder the project writes (a compare
report, a folder of training checkpoints, benchmark results) carries ``MARKER``, a small JSON file
naming its kind; ``check_output`` refuses, in one line saying why, to write into anything else: a
non-empty folder without our marker (or with another kind's), the dataset being read or a folder
holding it, the working directory or one above it. A prepared dataset is recognised by its
manifest instead (``ml_patterns.molecules.prepare.foreign_to_prepare``).

A folder written by a long-lived writer (``ModelCheckpoint``) is also locked while the writer runs:
``FolderLock`` creates ``LOCK`` holding the writer's host and pid; a second live writer is refused,
and a lock left by a process that is gone (same host, pid not running) is taken over.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

from ml_patterns.errors import DestinationError
from ml_patterns.io import _absolute, _alive, _host, atomic_write_text, check_destination

MARKER = ".ml-patterns-output.json"
LOCK = ".ml-patterns.lock"


def marker_kind(folder: Path) -> str | None:
    """The kind written in ``folder``'s marker, or None without a readable one."""
    try:
        kind = json.loads((Path(folder) / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def mark_output(folder: Path, kind: str) -> None:
    """Writes ``folder``'s marker (atomically): ``folder`` holds output of ``kind``."""
    atomic_write_text(Path(folder) / MARKER, json.dumps({"kind": kind, "written_by": "ml-patterns"}) + "\n")


def foreign_output(kind: str, recognise: Callable[[Path], bool] | None = None) -> Callable[[Path], str | None]:
    """A ``foreign`` test for ``ml_patterns.io.check_destination``: why a folder is not ``kind``'s
    output (None if it is). Ours: marked with ``kind``, empty, or, for folders written before
    markers existed, one that ``recognise`` accepts."""

    def foreign(folder: Path) -> str | None:
        found = marker_kind(folder)
        if found == kind:
            return None
        if found is not None:
            return f"it holds ml-patterns output of another kind ({found}), not a {kind}"
        entries = sorted(p.name for p in folder.iterdir() if p.name != LOCK)
        if not entries or (recognise is not None and recognise(folder)):
            return None
        return (
            f"it is not a {kind} written by ml-patterns (no {MARKER}) and holds {len(entries)} "
            f"entr{'y' if len(entries) == 1 else 'ies'} ({', '.join(entries[:3])}); choose a new or empty folder"
        )

    return foreign


def check_output(
    folder: str | os.PathLike,
    kind: str,
    *,
    protect: Iterable[Path] = (),
    recognise: Callable[[Path], bool] | None = None,
) -> Path:
    """Raises ``DestinationError`` unless ``folder`` may receive ``kind``'s output (see the module
    docstring); returns its absolute path. A missing folder is fine (it will be created)."""
    return check_destination(Path(folder), overwrite=True, foreign=foreign_output(kind, recognise), protect=protect)


# The locks this process holds: folder -> the object holding it (two writers in one process are
# told apart by this, the pid being the same).
_HELD: dict[Path, weakref.ref] = {}


class FolderLock:
    """``LOCK`` in ``folder`` while ``owner`` writes there: ``acquire`` refuses a folder another live
    writer holds (``DestinationError`` naming its host and pid), ``release`` removes the lock."""

    def __init__(self, folder: str | os.PathLike, owner: object, what: str):
        self.folder, self.what = _absolute(Path(folder)), what
        self._owner = weakref.ref(owner)
        self.path = self.folder / LOCK

    def acquire(self) -> None:
        holder = _HELD.get(self.folder)
        if holder is not None and holder() is not None and holder() is not self._owner():
            raise DestinationError(
                f"{self.folder} is already written by another {self.what} in this process; give each its own folder"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"host": _host(), "pid": os.getpid()}
        for _attempt in range(3):
            try:
                handle = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                other = self._holder()
                if other == me or (other is not None and other["host"] == me["host"] and not _alive(other["pid"])):
                    self.path.unlink(missing_ok=True)  # ours from an earlier fit, or left by a dead process
                    continue
                who = "an unreadable lock" if other is None else f"process {other['pid']} on {other['host']}"
                raise DestinationError(
                    f"{self.folder} is being written by {who} ({self.path}): two writers would overwrite each "
                    f"other's files; use another folder, or delete {LOCK} if that process is gone"
                ) from None
            with os.fdopen(handle, "w") as file:
                json.dump(me, file)
            _HELD[self.folder] = self._owner
            return
        raise DestinationError(f"could not lock {self.folder}: {self.path} keeps reappearing")

    def release(self) -> None:
        if _HELD.get(self.folder) is self._owner:
            del _HELD[self.folder]
            if self._holder() == {"host": _host(), "pid": os.getpid()}:
                self.path.unlink(missing_ok=True)

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        valid = isinstance(holder, dict) and isinstance(holder.get("host"), str) and isinstance(holder.get("pid"), int)
        return {"host": holder["host"], "pid": holder["pid"]} if valid else None
