"""The ``bench --quick`` run that tests/test_bench.py and tests/test_bench_training.py check (one run
for both: tests/conftest.py), its matmul, loss and Transformer sizes made tiny: the checks are about
the report's structure and arithmetic, none about a size (the mlp keeps its "small" size, named in
the markdown check)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_patterns_app.cli import main
from ml_patterns_bench import losses, peak, training
from ml_patterns_bench.models import ModelSize

TINY = ModelSize("tiny", d_model=16, n_layers=1, n_heads=2, batch=8, length=16)
REPORT = "bench.json"  # what the run writes in its folder


def run(data: Path, out: Path) -> dict:
    """The report ``ml-patterns bench --quick`` wrote to ``out`` (read back from its JSON)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(peak.SIZES, "cpu", 256)
        patch.setattr(losses, "SHAPES", ((8, 32, 128),))
        patch.setitem(training.SIZES, "cpu", (TINY, TINY))
        assert main(["bench", "--quick", "--out", str(out), "--data", str(data)]) == 0
    return read(out)


def read(out: Path) -> dict:
    """The report a run wrote to ``out``."""
    return json.loads((out / REPORT).read_text())
