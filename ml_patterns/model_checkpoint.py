"""``ModelCheckpoint``: saves full training checkpoints, keeps the k best, and deletes only its own.

What it may delete. Top-k pruning removes a checkpoint only if this callback's run lineage wrote it
into this callback's folder: a path it saved itself, or one restored from a checkpoint written by a
``ModelCheckpoint`` of the same folder (its state records the folder; the paths are kept relative
to it). A checkpoint resumed into another folder (``run1/last`` into ``ModelCheckpoint("run2")``)
brings no paths to prune: run 1's files are never run 2's to delete. A restored path that leaves the
folder (absolute, ``..``) is refused, whatever checksum the checkpoint carries.

Who writes the folder. At ``on_train_start`` the folder is checked (it must be new, empty, or hold
training checkpoints only) and locked (``ml_patterns.outputs.FolderLock``: a second live writer,
another process or another callback, is refused); the lock goes at ``on_train_end``.

When it saves. After every callback has seen the epoch (``ml_patterns.callbacks.after_callbacks``):
the checkpoint of epoch N holds every callback's state after epoch N, so resuming from any of them,
best or last, continues as the uninterrupted run did.
"""

from __future__ import annotations

import math
import os
import shutil
import string
import warnings
from collections.abc import Mapping
from pathlib import Path, PurePath

from ml_patterns.callbacks import (
    _BETTER,
    Callback,
    TrainerProtocol,
    _check_mode,
    after_callbacks,
    is_main,
    monitored_value,
)
from ml_patterns.io import _absolute
from ml_patterns.outputs import LOCK, MARKER, FolderLock, check_output
from ml_patterns.training_checkpoint import STATE_FILE, foreign_to_checkpoint

KIND = "folder of training checkpoints"


class ModelCheckpoint(Callback):
    """Saves full training checkpoints: the seed's ``ModelCheckpoint(path, save_best_only=True)``,
    writing ``path/epoch_{epoch}`` through ``trainer.save_checkpoint`` (a directory, written atomically).

    Args:
        path: directory for the checkpoints (created at the start of training). It must be new,
            empty or hold training checkpoints only; one writer at a time (see the module docstring).
        save_best_only: save only when the monitor improves on the best so far (strictly, as the
            seed); ``False``: save every epoch.
        filename: ``str.format`` template over ``epoch`` and the epoch's metrics, e.g.
            ``"epoch{epoch:03d}-{val_loss:.4f}"``.
        monitor, mode: what "best" means. ``monitor=None`` ranks nothing (needs ``save_best_only=False``).
        save_top_k: keep only the k best checkpoints by the monitor, deleting the others (``-1``,
            the default: keep every one saved; ``0``: none but ``last``).
        save_last: also write ``path/last`` every epoch (what a resume starts from).

    A checkpoint is deleted only after its replacement is on disk, and only if this run lineage
    wrote it here. A NaN or infinite monitored value is never "best".
    """

    LAST = "last"

    def __init__(
        self,
        path: str | os.PathLike,
        save_best_only: bool = True,
        *,
        filename: str = "epoch_{epoch}",
        monitor: str | None = "val_loss",
        mode: str = "min",
        save_top_k: int = -1,
        save_last: bool = False,
    ):
        _check_mode(mode)
        if isinstance(save_top_k, bool) or not isinstance(save_top_k, int) or save_top_k < -1:
            raise ValueError(f"save_top_k must be -1, 0 or positive, got {save_top_k}")
        if monitor is None and (save_best_only or save_top_k not in (-1, 0)):
            raise ValueError(
                "save_best_only and save_top_k need a monitor to rank checkpoints by; "
                "with monitor=None pass save_best_only=False"
            )
        self.dirpath, self.filename, self.monitor, self.mode = Path(path), filename, monitor, mode
        self.save_top_k, self.save_best_only, self.save_last = save_top_k, save_best_only, save_last
        self._better = _BETTER[mode]
        self.best_k: dict[str, float] = {}  # path (inside dirpath) -> monitored value
        self.best_model_path: str | None = None
        self.best_model_score: float | None = None
        self.last_model_path: str | None = None
        self._lock: FolderLock | None = None  # held from on_train_start to on_train_end

    def format_path(self, epoch: int, logs: Mapping[str, float]) -> Path:
        fields = {"epoch": epoch, **logs}
        needed = [name for _, name, _, _ in string.Formatter().parse(self.filename) if name]
        missing = [name for name in needed if name not in fields]
        if missing:
            raise KeyError(f"checkpoint filename {self.filename!r} uses {missing}, not among {sorted(fields)}")
        return self.dirpath / self.filename.format(**fields)

    def plan(self, epoch: int, logs: Mapping[str, float]) -> tuple[Path | None, list[str]]:
        """The pure decision: ``(path to save or None, paths to delete after saving)``."""
        if self.save_top_k == 0:
            return None, []
        path = self.format_path(epoch, logs)
        if self.monitor is None or self.save_top_k == -1 and not self.save_best_only:
            return path, []
        current = monitored_value(logs, self.monitor)
        if not math.isfinite(current):
            return None, []  # a NaN checkpoint is never "best"
        if (
            self.save_best_only
            and self.best_model_score is not None
            and not self._better(current, self.best_model_score)
        ):
            return None, []
        if self.save_top_k == -1 or len(self.best_k) < self.save_top_k:
            return path, []
        worst_path = self._worst()
        if not self._better(current, self.best_k[worst_path]):
            return None, []
        return path, [worst_path]

    def _worst(self) -> str:
        # min() picks the first of equals, so among ties the oldest checkpoint goes first.
        if self.mode == "min":
            return max(self.best_k, key=lambda p: self.best_k[p])
        return min(self.best_k, key=lambda p: self.best_k[p])

    def needed_metrics(self) -> set[str]:
        """The metrics its decisions and file names read (``fit`` refuses ``val_loss`` without a val loader)."""
        fields = {name for _, name, _, _ in string.Formatter().parse(self.filename) if name} - {"epoch"}
        ranks = self.monitor is not None and self.save_top_k != 0 and (self.save_best_only or self.save_top_k > 0)
        return fields | ({self.monitor} if ranks else set())

    def on_train_start(self, trainer: TrainerProtocol) -> None:
        if is_main(trainer):
            check_output(self.dirpath, KIND, recognise=_holds_checkpoints_only)
            self._lock = self._lock or FolderLock(self.dirpath, self, "ModelCheckpoint")
            self._lock.acquire()

    def on_train_end(self, trainer: TrainerProtocol) -> None:
        if self._lock is not None:
            self._lock.release()

    def on_epoch_end(self, epoch: int, trainer: TrainerProtocol, metrics: Mapping[str, float]) -> None:
        path, delete = self.plan(epoch, metrics)
        # The bookkeeping first: the checkpoint written below holds this epoch's decisions.
        if path is not None and self.monitor is not None and self.monitor in metrics:
            # Saving every epoch needs no monitor; when the metrics hold it, "best" is still tracked.
            current = monitored_value(metrics, self.monitor)
            self.best_k[str(path)] = current
            if self.best_model_score is None or self._better(current, self.best_model_score):
                self.best_model_path, self.best_model_score = str(path), current
        for old in delete:
            self.best_k.pop(old, None)
        last = self.dirpath / self.LAST if self.save_last else None
        if last is not None:
            self.last_model_path = str(last)
        deleted = [old for old in delete if old != str(path)]

        def save() -> None:
            if path is not None:
                trainer.save_checkpoint(path)
                if is_main(trainer):
                    for old in deleted:
                        self._remove(Path(old))
            if last is not None:
                trainer.save_checkpoint(last)

        after_callbacks(trainer, save)

    def _remove(self, path: Path) -> None:
        """Deletes a pruned checkpoint: one of this folder's, and (a directory) a training checkpoint."""
        folder, target = _absolute(self.dirpath), _absolute(path)
        if target == folder or not target.is_relative_to(folder):
            raise ValueError(f"refusing to delete {path}: it is not inside this callback's folder {self.dirpath}")
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            reason = foreign_to_checkpoint(path)
            if reason:
                warnings.warn(f"not deleting {path}, which top-k pruning would remove: {reason}", stacklevel=3)
                return
            shutil.rmtree(path)

    def state_dict(self) -> dict:
        folder = _absolute(self.dirpath)
        return {
            "dirpath": str(folder),
            # Relative to the folder: a restored path can only name something inside it.
            "best_k": {_relative(path, folder): value for path, value in self.best_k.items()},
            "best_model_path": self.best_model_path,
            "best_model_score": self.best_model_score,
            "last_model_path": self.last_model_path,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores the ranking; the paths to prune only from a state written for this same folder
        (see the module docstring). Raises ``ValueError`` for a path that leaves the folder."""
        best_k = dict(state["best_k"])
        same_folder = state.get("dirpath") == str(_absolute(self.dirpath))
        # Checkpoints written before the folder was recorded ("dirpath") list absolute paths: none is pruned.
        for name in best_k if "dirpath" in state else ():
            relative = PurePath(name)
            if not relative.parts or relative.is_absolute() or ".." in relative.parts:
                raise ValueError(
                    f"ModelCheckpoint state names {name!r} among its checkpoints: not a path inside its folder "
                    "(a checkpoint edited by hand?); resume from another checkpoint"
                )
        self.best_k = {str(self.dirpath / name): value for name, value in best_k.items()} if same_folder else {}
        self.best_model_path, self.best_model_score = state["best_model_path"], state["best_model_score"]
        self.last_model_path = state["last_model_path"] if same_folder else None


def _relative(path: str, folder: Path) -> str:
    return _absolute(Path(path)).relative_to(folder).as_posix()


def _holds_checkpoints_only(folder: Path) -> bool:
    """Whether every entry of ``folder`` is a training checkpoint (or one being written): a folder of
    checkpoints written before folders were marked."""
    for entry in folder.iterdir():
        if entry.name in (LOCK, MARKER):
            continue
        hidden_leftover = entry.name.startswith(".") and entry.name.endswith((".partial", ".old"))
        if not hidden_leftover and not (entry.is_dir() and (entry / STATE_FILE).is_file()):
            return False
    return True
