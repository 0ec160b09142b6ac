"""The seed's LazyDataset: one file per item, listed in ``index.json``, loaded only when accessed.

Writes a small dataset to a temporary directory (items as pretty-printed .json and as .npz), reads
it with the built-in loaders, then with a subclass whose ``_load_file`` reads a format of its own,
and batches it with a torch DataLoader.  Run: ``python examples/lazy_dataset.py``.
"""

# expect: ^\{'x': \(\(4, 4\), torch\.float32\), 'y': \(\(4,\), torch\.int64\)\}$

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ml_patterns.data import LazyDataset


def write_dataset(root: Path, n: int = 10) -> None:
    rng = np.random.default_rng(0)
    (root / "items").mkdir()
    index = []
    for i in range(n):
        x = rng.normal(size=4).round(3)
        y = int(x.sum() > 0)  # an integer class label
        if i % 2:  # half the items as .npz, half as pretty-printed .json: the loader goes by extension
            np.savez(root / "items" / f"{i}.npz", x=x.astype(np.float32), y=np.int64(y))
            index.append({"file": f"items/{i}.npz"})
        else:
            (root / "items" / f"{i}.json").write_text(json.dumps({"x": x.tolist(), "y": y}, indent=2))
            index.append({"file": f"items/{i}.json"})
        (root / "items" / f"{i}.txt").write_text(" ".join(map(str, [*x, y])))  # for the subclass below
    (root / "index.json").write_text(json.dumps(index, indent=2))


def to_arrays(item: dict) -> dict:
    """The transform: every item as ``{"x": float32 [4], "y": int64 scalar}``, whatever its file."""
    return {"x": np.asarray(item["x"], np.float32), "y": np.int64(item["y"])}


class TextDataset(LazyDataset):
    """The seed's extension point: ``_load_file`` reads one item from its file."""

    def _load_file(self, path: Path) -> dict:
        *x, y = path.with_suffix(".txt").read_text().split()
        return {"x": np.array(x, np.float32), "y": np.int64(y)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root)
        dataset = LazyDataset(root, transform=to_arrays)
        print(f"{len(dataset)} items; item 1 (from {dataset.index[1]['file']}): {dataset[1]}")
        text = TextDataset(root)
        for i in range(len(text)):  # the same items, read by the subclass from the .txt files
            assert np.allclose(text[i]["x"], dataset[i]["x"]) and text[i]["y"] == dataset[i]["y"]
        loader = DataLoader(dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
        for batch in loader:  # torch's default collate stacks the dicts: x float32 [B, 4], y int64 [B]
            print({name: (tuple(value.shape), value.dtype) for name, value in batch.items()})


if __name__ == "__main__":
    main()
