"""A checkpoint read while another process saves over it: every successful load is one whole save.

The saver writes save number i as weights, optimizer moments and trainer epoch all equal to i, so a
load that mixed two saves shows two different numbers.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ml_patterns.checkpoint import CheckpointError, load_checkpoint
from ml_patterns.training_checkpoint import load_training_checkpoint

SAVER = """
import sys, time
from pathlib import Path
import numpy as np
from ml_patterns.checkpoint import save_checkpoint
from ml_patterns.training_checkpoint import save_training_checkpoint

path, seconds = Path(sys.argv[1]), float(sys.argv[2])
end, i = time.monotonic() + seconds, 0
while time.monotonic() < end:
    i += 1
    weights = {"w": np.full((64, 64), i, np.float32)}
    save_training_checkpoint(
        path,
        write_model=lambda file: save_checkpoint(
            file, weights, backend="torch", model_class="Toy", config=None, versions={}
        ),
        optimizer_arrays={"exp_avg/w": np.full((64, 64), i, np.float32)},
        state={"epoch": i, "optimizer": {"name": "adam", "step": i}, "sampler": None, "callbacks": [],
               "history": {}},
    )
print(i)
"""


def one_save(path: Path) -> set[float]:
    """The save numbers a load of ``path`` holds (one number for a consistent load)."""
    model_file, optimizer, state = load_training_checkpoint(path)
    weights, _ = load_checkpoint(model_file)
    return {
        *np.unique(weights["w"]).tolist(),
        *np.unique(optimizer["exp_avg/w"]).tolist(),
        float(state["epoch"]),
        float(state["optimizer"]["step"]),
    }


def race(path: Path, seconds: float) -> tuple[int, int, list]:
    """Loads ``path`` while a saver process saves there for ``seconds``: ``(saves, successful loads,
    the loads that mixed saves)``; a load refused on the way (the file replaced under it) is fine."""
    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    loads, mixed = 0, []
    try:
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        while saver.poll() is None:
            try:
                numbers = one_save(path)
            except (FileNotFoundError, CheckpointError):
                continue
            loads += 1
            if len(numbers) != 1:
                mixed.append(sorted(numbers))
    finally:
        if saver.poll() is None:
            saver.kill()
        saves = int(saver.communicate()[0] or 0)
    assert saver.returncode == 0
    return saves, loads, mixed


def test_loads_during_saves_each_hold_one_whole_save(tmp_path):
    path = tmp_path / "last"
    saves, loads, mixed = race(path, 4)
    assert saves > 5 and loads > 5, (saves, loads)
    assert not mixed, f"{len(mixed)} of {loads} loads mixed saves, e.g. {mixed[:3]}"
    assert one_save(path) == {float(saves)}
