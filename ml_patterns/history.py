"""Training history: per-epoch metrics, written as CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path

from ml_patterns.io import atomic_write_text


class History:
    """Per-epoch metrics as ``{name: [value of epoch 0, value of epoch 1, ...]}``.

    Every epoch records the same keys as the first; ``"epoch"`` is always the first column.
    """

    def __init__(self) -> None:
        self.metrics: dict[str, list[float]] = {}

    def append(self, epoch: int, logs: Mapping[str, float]) -> None:
        row = {"epoch": epoch, **{k: float(v) for k, v in logs.items()}}
        if self.metrics and set(row) != set(self.metrics):
            raise KeyError(f"epoch {epoch} logs keys {sorted(row)}, earlier epochs logged {sorted(self.metrics)}")
        for key, value in row.items():
            self.metrics.setdefault(key, []).append(value)

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
        """Writes ``path`` with suffixes ``.csv`` and ``.json``, each atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path.with_suffix(".csv"), self.to_csv())
        atomic_write_text(path.with_suffix(".json"), json.dumps(self.metrics, indent=1) + "\n")

    def state_dict(self) -> dict[str, list[float]]:
        return self.as_dict()

    def load_state_dict(self, state: Mapping[str, list[float]]) -> None:
        self.metrics = {k: list(v) for k, v in state.items()}
