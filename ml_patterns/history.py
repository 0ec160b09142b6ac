"""Training history: per-epoch metrics, written as CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

from ml_patterns.io import atomic_write_text


def history_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(NAME.csv, NAME.json)`` for ``path`` = ``NAME``: the name kept whole, dots and all
    (``history_lr0.001`` -> ``history_lr0.001.csv``); a name already ending in ``.csv`` or ``.json``
    stands for both files."""
    path = Path(path)
    name = path.name.removesuffix(".csv") if path.name.endswith(".csv") else path.name.removesuffix(".json")
    return path.with_name(f"{name}.csv"), path.with_name(f"{name}.json")


def foreign_to_history(path: str | os.PathLike) -> str | None:
    """Why the files of ``history_files(path)`` may not be replaced by a history (None if they may):
    an existing file that is not a history written here (a CSV starting with ``epoch``, a JSON
    object with an ``"epoch"`` list) is the user's."""
    csv_path, json_path = history_files(path)
    for file, ours in ((csv_path, _is_history_csv), (json_path, _is_history_json)):
        if os.path.lexists(file) and not (file.is_file() and not file.is_symlink() and ours(file)):
            return f"refusing to write the history to {file}: it exists and is not a history; choose another name"
    return None


def _is_history_csv(file: Path) -> bool:
    with open(file, "rb") as handle:
        return handle.readline().startswith(b"epoch")


def _is_history_json(file: Path) -> bool:
    try:
        content = json.loads(file.read_bytes())
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(content, dict) and isinstance(content.get("epoch"), list)


class History:
    """Per-epoch metrics as ``{name: [value of epoch 0, value of epoch 1, ...]}``.

    ``append`` records an epoch with the same keys as the first; ``"epoch"`` is always the first
    column. ``update_last`` then adds or changes values of that epoch (the metrics callbacks put
    into the epoch's ``metrics``): a key first logged at a later epoch is NaN for the epochs before
    it (not measured), so every list keeps one value per epoch.
    """

    def __init__(self) -> None:
        self.metrics: dict[str, list[float]] = {}

    def append(self, epoch: int, logs: Mapping[str, float]) -> None:
        row = {"epoch": epoch, **{k: float(v) for k, v in logs.items()}}
        if self.metrics and set(row) != set(self.metrics):
            raise KeyError(f"epoch {epoch} logs keys {sorted(row)}, earlier epochs logged {sorted(self.metrics)}")
        for key, value in row.items():
            self.metrics.setdefault(key, []).append(value)

    def update_last(self, logs: Mapping[str, float]) -> None:
        """Sets ``logs``' values in the last epoch's row, adding the keys the history lacks (NaN for
        the epochs before). Raises ``TypeError`` naming a key whose value is not a number."""
        if not len(self):
            raise ValueError("update_last needs an epoch: append one first")
        for key, value in logs.items():
            if key == "epoch":
                if value != self.metrics["epoch"][-1]:
                    raise ValueError(f"metric 'epoch' is the history's own column ({self.metrics['epoch'][-1]})")
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise TypeError(
                    f"metric {key!r} of epoch {self.metrics['epoch'][-1]} is {value!r}, not a number: the history "
                    "(and its CSV) records numbers only"
                ) from None
            if key not in self.metrics:
                self.metrics[key] = [math.nan] * (len(self) - 1)
                self.metrics[key].append(number)
            else:
                self.metrics[key][-1] = number

    def __len__(self) -> int:
        return len(self.metrics.get("epoch", []))

    def __getitem__(self, key: str) -> list[float]:
        return self.metrics[key]

    def as_dict(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self.metrics.items()}

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        keys = list(self.metrics)
        writer.writerow(keys)
        for i in range(len(self)):
            writer.writerow([self.metrics[k][i] for k in keys])
        return buffer.getvalue()

    def write(self, path: str | os.PathLike) -> None:
        """Writes ``history_files(path)``, each atomically."""
        csv_path, json_path = history_files(path)
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(csv_path, self.to_csv())
        atomic_write_text(json_path, json.dumps(self.metrics, indent=1) + "\n")

    def state_dict(self) -> dict[str, list[float]]:
        return self.as_dict()

    def load_state_dict(self, state: Mapping[str, list[float]]) -> None:
        self.metrics = {k: list(v) for k, v in state.items()}
