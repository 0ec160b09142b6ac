"""The files of a full training checkpoint (layout: ``ml_patterns.training``), written and read.

Every file of a checkpoint is covered by ``checksums.json`` (written last, inside the staging
directory that ``save_training_checkpoint`` publishes): a flipped byte in the model,
the optimizer state or ``trainer_state.json`` is caught on load, before anything is applied. The
trainer state is then checked key by key, so a bad value is reported with the file and the key
(``trainer_state.json: 'epoch' must be an integer >= 0, got 'one'``), not as a traceback from
deep inside the load.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ml_patterns.checkpoint import CheckpointError, FileBytes
from ml_patterns.io import atomic_write_bytes, atomic_write_text, sha256_file, staged_directory

FORMAT = "ml-patterns-training-checkpoint/1"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
CHECKSUMS_FILE = "checksums.json"
CHECKSUMMED_FILES = (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE)

# Optimizer slots per OptimizerConfig.name, in the canonical naming of both sides.
OPTIMIZER_SLOTS = {
    "sgd": ("momentum_buffer",),
    "adam": ("exp_avg", "exp_avg_sq"),
    "adam_l2": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
}


def checksum_table(directory: Path) -> str:
    """The text of ``checksums.json`` for the files of a checkpoint written into ``directory``."""
    digests = {name: sha256_file(directory / name) for name in CHECKSUMMED_FILES}
    return json.dumps({"format": FORMAT, "sha256": digests}, indent=1) + "\n"


def read_checkpoint_files(path: Path) -> dict[str, bytes]:
    """The bytes of every file of the checkpoint at ``path``, all of one save, each read once and
    checked against ``checksums.json`` (read with them): ``{file name: bytes}``.

    The files are opened through one handle on the directory, so they all come from the directory
    that was at ``path`` when it was opened: a save publishes a new directory (never rewrites one
    in place), so a reader never mixes two saves. Should a save replace the checkpoint, and delete
    the old directory, while it is being read, the read starts again on the new one.

    Raises ``FileNotFoundError`` (no checkpoint at ``path``) or ``CheckpointError`` naming the file.
    """
    for _attempt in range(_READ_ATTEMPTS):
        try:
            directory = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            # A save renames the old checkpoint aside just before moving the new one in.
            time.sleep(_RETRY_S)
            continue
        except NotADirectoryError:
            break
        try:
            files = _read_relative(directory, (*CHECKSUMMED_FILES, CHECKSUMS_FILE))
            replaced = _replaced(path, directory)
        finally:
            os.close(directory)
        if files is not None:
            _verify(path, files)
            return files
        if not replaced:
            missing = [name for name in (*CHECKSUMMED_FILES, CHECKSUMS_FILE) if not (path / name).is_file()]
            raise CheckpointError(f"training checkpoint {path} is incomplete: {missing} missing")
    raise FileNotFoundError(f"training checkpoint {path} does not exist (or is not a directory)")


# A save's replacement takes two renames; a reader that loses the race tries again, this many times.
_READ_ATTEMPTS, _RETRY_S = 20, 0.005


def _read_relative(directory: int, names: tuple[str, ...]) -> dict[str, bytes] | None:
    """The files ``names`` in the open ``directory``; None if one is missing."""
    files = {}
    for name in names:
        try:
            handle = os.open(name, os.O_RDONLY, dir_fd=directory)
        except FileNotFoundError:
            return None
        with os.fdopen(handle, "rb") as file:
            files[name] = file.read()
    return files


def _replaced(path: Path, directory: int) -> bool:
    """Whether ``path`` no longer names the open ``directory`` (a save replaced it)."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return True
    opened = os.fstat(directory)
    return (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino)


def _verify(path: Path, files: Mapping[str, bytes]) -> None:
    table = _parse_json(path / CHECKSUMS_FILE, files[CHECKSUMS_FILE])
    digests = table.get("sha256") if isinstance(table, dict) else None
    if not isinstance(digests, dict) or set(digests) != set(CHECKSUMMED_FILES):
        raise CheckpointError(f"{path / CHECKSUMS_FILE} must map {list(CHECKSUMMED_FILES)} to sha256 digests")
    for name in CHECKSUMMED_FILES:
        if hashlib.sha256(files[name]).hexdigest() != digests[name]:
            raise CheckpointError(
                f"{path / name} does not match its checksum in {CHECKSUMS_FILE}: the file is corrupt or was "
                "changed after it was written; resume from another checkpoint"
            )


def _parse_json(path: Path, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None


def check_trainer_state(state: Any, source: Path) -> None:
    """Raises ``CheckpointError`` naming ``source`` and the key unless ``state`` has the shape the trainers read."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} must hold a JSON object, got {type(state).__name__}")
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{source}: format {state.get('format')!r}, expected {FORMAT!r}")

    def fail(key: str, wanted: str, value: Any) -> None:
        raise CheckpointError(f"{source}: {key!r} must be {wanted}, got {value!r}")

    for key in ("epoch", "optimizer", "history", "callbacks"):
        if key not in state:
            raise CheckpointError(f"{source}: key {key!r} is missing")
    if not _count(state["epoch"]):
        fail("epoch", "an integer >= 0", state["epoch"])
    optimizer = state["optimizer"]
    if not isinstance(optimizer, dict):
        fail("optimizer", "an object", optimizer)
    if not _count(optimizer.get("step")):
        fail("optimizer.step", "an integer >= 0", optimizer.get("step"))
    kind = "framework" if "framework" in optimizer else "name"
    if not isinstance(optimizer.get(kind), str):
        fail(f"optimizer.{kind}", "a string", optimizer.get(kind))
    if state.get("sampler") is not None and not isinstance(state["sampler"], dict):
        fail("sampler", "an object or null", state["sampler"])
    callbacks = state["callbacks"]
    if not isinstance(callbacks, list) or not all(isinstance(c, dict) for c in callbacks):
        fail("callbacks", "a list of objects", callbacks)
    _check_history(state["history"], fail)


def _check_history(history: Any, fail) -> None:
    if not isinstance(history, dict):
        fail("history", "an object of per-epoch lists", history)
    lengths = set()
    for key, values in history.items():
        if not isinstance(values, list) or not all(_number(v) for v in values):
            fail(f"history.{key}", "a list of numbers", values)
        lengths.add(len(values))
    if len(lengths) > 1:
        fail("history", "lists of one length (one value per epoch)", {k: len(v) for k, v in history.items()})


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    # NaN and infinities count: a diverged epoch is recorded as it was.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def save_training_checkpoint(
    path: str | os.PathLike,
    *,
    write_model: Callable[[Path], None],
    optimizer_arrays: Mapping[str, np.ndarray],
    state: dict,
) -> None:
    """Writes a full training checkpoint directory at ``path``, replacing any previous one atomically.

    A kill at any moment leaves either the previous checkpoint or the new one, never a mix: the new
    one is written into a hidden staging directory and renamed over the old one only when complete.
    """
    from safetensors.numpy import save

    with staged_directory(Path(path), overwrite=True, foreign=foreign_to_checkpoint) as staging:
        write_model(staging / MODEL_FILE)
        # np.asarray(order="C"), not ascontiguousarray: that one makes a 0-d step count 1-d.
        arrays = {k: np.asarray(v, order="C") for k, v in optimizer_arrays.items()}
        atomic_write_bytes(staging / OPTIMIZER_FILE, save(arrays))
        atomic_write_text(staging / STATE_FILE, json.dumps({"format": FORMAT, **state}, indent=1) + "\n")
        atomic_write_text(staging / CHECKSUMS_FILE, checksum_table(staging))


def foreign_to_checkpoint(directory: Path) -> str | None:
    """Why ``directory`` is not a training checkpoint that a new one may replace (None if it is)."""
    ours = {*CHECKSUMMED_FILES, CHECKSUMS_FILE}
    others = sorted(p.name for p in directory.iterdir() if p.name not in ours)
    if not (directory / STATE_FILE).is_file():
        return f"it is not a training checkpoint (no {STATE_FILE})"
    if others:
        return f"it holds {len(others)} file(s) a checkpoint does not ({', '.join(others[:3])}); move them first"
    return None


def load_training_checkpoint(path: str | os.PathLike) -> tuple[FileBytes, dict[str, np.ndarray], dict[str, Any]]:
    """``(model file's bytes, optimizer arrays, trainer state)`` of a full checkpoint, all of one save
    (``read_checkpoint_files``): every file checked against its checksum and the state's keys and
    types checked (``CheckpointError`` names the file and the key), before anything is returned.
    The model's ``FileBytes`` go to ``ml_patterns.checkpoint.load_checkpoint``, which parses them
    without reading the file again."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(path)
    files = read_checkpoint_files(path)
    state = _parse_json(path / STATE_FILE, files[STATE_FILE])
    check_trainer_state(state, path / STATE_FILE)
    try:
        optimizer_arrays = load(files[OPTIMIZER_FILE])
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path / OPTIMIZER_FILE} is corrupt: {error}") from None
    return FileBytes(path / MODEL_FILE, files[MODEL_FILE]), optimizer_arrays, state


def optimizer_arrays_to_slots(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """``{"exp_avg/w": a, ...}`` -> ``{"exp_avg": {"w": a}, ...}``."""
    slots: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        slot, _, name = key.partition("/")
        if not name:
            raise ValueError(f"optimizer array {key!r} is not named '<slot>/<parameter>'")
        slots.setdefault(slot, {})[name] = value
    return slots


def check_optimizer_state(name: str, slots: Mapping[str, Mapping], parameter_names: list[str], source: str) -> None:
    """Refuses a checkpoint whose optimizer slots do not fit ``name`` and the model's parameters."""
    expected = set(OPTIMIZER_SLOTS[name])
    if set(slots) - expected:
        raise ValueError(
            f"{source}: optimizer slots {sorted(slots)} do not belong to optimizer {name!r} "
            f"(expects {sorted(expected)})"
        )
    for slot, arrays in slots.items():
        missing = sorted(set(parameter_names) - set(arrays))
        unexpected = sorted(set(arrays) - set(parameter_names))
        if missing or unexpected:
            raise ValueError(f"{source}: optimizer slot {slot!r} missing {missing}, unexpected {unexpected}")
