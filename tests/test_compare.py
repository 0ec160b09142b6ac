"""``ml-patterns compare``, end to end on a slice of the default dataset, and its report logic."""

from __future__ import annotations

import json

import pytest

from bench.compare import CompareSettings, build_report
from ml_patterns.cli import main


def test_compare_end_to_end(default_dataset, tmp_path, capsys):
    out = tmp_path / "report"
    status = main(["compare", "--data", str(default_dataset[0]), "--out", str(out), "--epochs", "2",
                   "--batch-size", "32", "--max-train-molecules", "96"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "Verdict: On this machine" in printed and "agree numerically" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["parity"]["passed"] and len(results["parity"]["epochs"]) == 2
    for backend in ("torch", "jax"):
        assert set(results["test_metrics"][backend]) >= {"MAE TPSA", "MAE MolWt", "masked-token accuracy"}
        assert results["speed"][backend]["steps_per_s"] > 0
        assert results["backends"][backend]["versions"]
    assert results["speed"]["jax"]["compilations"] >= 2  # at least one train and one eval compilation
    for name in ("report.md", "loss_curves.png", "speed.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def fake_result(train_losses, val_losses):
    epochs = list(range(len(train_losses)))
    return {
        "history": {"epoch": epochs, "train_loss": train_losses, "val_loss": val_losses},
        "epoch_times": [{"epoch": e, "train_s": 2.0 if e == 0 else 1.0, "val_s": 0.5} for e in epochs],
        "steps_per_epoch": 10, "samples_per_epoch": 640, "compilations": None, "max_length": 128,
        "truncated": {"train": 0, "val": 0, "test": 0},
        "test_metrics": {"MAE TPSA": 1.0}, "device": {"kind": "cpu", "name": "CPU"}, "versions": {}, "threads": 2,
        "precision": "float32", "peak_memory_bytes": 1, "peak_memory_kind": "process peak RSS",
    }


@pytest.mark.parametrize(("jax_train", "passed"), [
    ([2.0, 1.00005], True),    # 5e-5 relative: inside rtol 1e-4
    ([2.0, 1.0002], False),    # 2e-4 relative: outside
])
def test_report_applies_the_history_tolerance(default_dataset, jax_train, passed):
    results = {"torch": fake_result([2.0, 1.0], [3.0, 2.0]), "jax": fake_result(jax_train, [3.0, 2.0])}
    report = build_report(CompareSettings(), default_dataset[1], results, default_dataset[0])
    assert report["parity"]["passed"] is passed
    assert ("agree numerically" in report["verdict"]) is passed
    assert report["speed"]["torch"]["warmup_s"] == pytest.approx(1.0)
    assert report["speed"]["torch"]["steps_per_s"] == pytest.approx(10.0)
