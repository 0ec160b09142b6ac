"""examples/check_your_port.py runs and finds the port in agreement (a shortened run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "check_your_port.py"


def test_the_example_runs_and_agrees(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("check_your_port", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--steps", "30", "--plot", str(tmp_path / "drift.png")]) == 0
    out = capsys.readouterr().out
    assert "conv1.weight" in out and "OIHW->HWIO" in out
    assert "forward: agree" in out and "training over 30 steps: agree" in out
    assert (tmp_path / "drift.png").stat().st_size > 0
