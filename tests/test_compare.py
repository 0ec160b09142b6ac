"""``ml-patterns compare``, end to end on a slice of the default dataset, and its parts: the report
logic, the progress display, Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import sys
import time

import pytest

from ml_patterns_app.cli import main
from ml_patterns_app.compare import report as compare_report
from ml_patterns_app.compare import runner
from ml_patterns_app.compare.report import build_report, write_report
from ml_patterns_app.compare.settings import CompareSettings


def test_compare_end_to_end(default_dataset, tmp_path, capsys):
    out = tmp_path / "report"
    status = main(
        [
            "compare",
            "--data",
            str(default_dataset[0]),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--max-train-molecules",
            "96",
            "--device",
            "cpu",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "Verdict: On this machine" in printed and compare_report.AGREE in printed
    for label in ("PyTorch (eager)", "JAX (jax.jit)"):  # progress, a line per epoch off a terminal
        assert f"{label:<16} epoch 2/2  train_loss " in printed and f"{label:<16} done" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["parity"]["passed"] and len(results["parity"]["epochs"]) == 2
    for backend in ("torch", "jax"):
        assert set(results["test_metrics"][backend]) >= {"MAE TPSA", "MAE MolWt", "masked-token accuracy"}
        assert results["speed"][backend]["steps_per_s"] > 0
        assert results["backends"][backend]["versions"]
    assert results["speed"]["jax"]["compilations"] >= 2  # at least one train and one eval compilation
    assert results["speed"]["torch"]["compilations"] is None
    assert sorted(p.name for p in out.iterdir()) == sorted(compare_report.FILES)
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def fake_result(train_losses, val_losses):
    epochs = list(range(len(train_losses)))
    return {
        "history": {"epoch": epochs, "train_loss": train_losses, "val_loss": val_losses},
        "epoch_times": [{"epoch": e, "train_s": 2.0 if e == 0 else 1.0, "val_s": 0.5} for e in epochs],
        "steps_per_epoch": 10,
        "samples_per_epoch": 640,
        "compilations": None,
        "max_length": 128,
        "truncated": {"train": 0, "val": 0, "test": 0},
        "test_metrics": {"MAE TPSA": 1.0},
        "device": {"kind": "cpu", "name": "CPU"},
        "versions": {},
        "threads": 2,
        "precision": "float32",
        "peak_memory_bytes": 1,
        "peak_memory_kind": "process peak RSS",
    }


@pytest.mark.parametrize(
    ("jax_train", "passed"),
    [
        ([2.0, 1.00005], True),  # 5e-5 relative: inside rtol 1e-4
        ([2.0, 1.0002], False),  # 2e-4 relative: outside
    ],
)
def test_report_applies_the_history_tolerance(default_dataset, jax_train, passed):
    results = {"torch": fake_result([2.0, 1.0], [3.0, 2.0]), "jax": fake_result(jax_train, [3.0, 2.0])}
    report = build_report(CompareSettings(), default_dataset[1], results, default_dataset[0])
    assert report["parity"]["passed"] is passed
    assert (compare_report.AGREE in report["verdict"]) is passed
    assert report["tolerance"]["rtol"] == 1e-4
    assert report["speed"]["torch"]["warmup_s"] == pytest.approx(1.0)
    assert report["speed"]["torch"]["steps_per_s"] == pytest.approx(10.0)


def test_an_interrupted_write_leaves_the_previous_report(default_dataset, tmp_path, monkeypatch):
    results = {"torch": fake_result([2.0, 1.0], [3.0, 2.0]), "jax": fake_result([2.0, 1.0], [3.0, 2.0])}
    report = {**build_report(CompareSettings(), default_dataset[1], results, default_dataset[0]), "wall_time_s": 1.0}
    out = tmp_path / "out"
    write_report(report, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(report):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_report, "_speed_bars", interrupted)  # the last file written
    with pytest.raises(KeyboardInterrupt, match="^$"):
        write_report({**report, "wall_time_s": 2.0}, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging directory left behind


def test_status_line_renders_worker_events():
    stream = io.StringIO()
    status = runner.StatusLine("JAX (jax.jit)", stream)
    status.event(
        json.dumps(
            {"event": "batch", "epoch": 0, "epochs": 3, "batch": 5, "batches": 62, "loss": 2.5, "steps_per_s": 3.0}
        )
    )  # transient: shown only on a terminal
    status.event(
        json.dumps({"event": "epoch", "epoch": 0, "epochs": 3, "seconds": 20.0, "train_loss": 2.8, "val_loss": 2.9})
    )
    status.event("a line that is not an event\n")
    assert stream.getvalue().splitlines() == [
        "JAX (jax.jit)    epoch 1/3  train_loss 2.8000  val_loss 2.9000  (20.0 s)",
        "JAX (jax.jit)    a line that is not an event",
    ]
    terminal = io.StringIO()
    terminal.isatty = lambda: True
    live = runner.StatusLine("torch", terminal)
    live.event(
        json.dumps(
            {"event": "batch", "epoch": 1, "epochs": 3, "batch": 5, "batches": 62, "loss": 2.5, "steps_per_s": 3.0}
        )
    )
    assert terminal.getvalue() == "\rtorch            epoch 2/3  batch 5/62  loss 2.5000  3.0 steps/s"


def test_ctrl_c_stops_the_worker(tmp_path, monkeypatch):
    pid_file = tmp_path / "pid"
    script = (
        "import json, os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); "
        "print(json.dumps({'event': 'status', 'text': 'training'}), flush=True); time.sleep(60)"
    )
    monkeypatch.setattr(runner, "worker_command", lambda *args: [sys.executable, "-c", script, str(pid_file)])

    def ctrl_c(self, line):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.StatusLine, "event", ctrl_c)
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt, match="^$"):
        runner.run_worker("torch", {}, tmp_path / "out.json")
    assert time.perf_counter() - start < 30
    with pytest.raises(ProcessLookupError, match="No such process"):  # stopped and reaped
        os.kill(int(pid_file.read_text()), 0)
    assert not (tmp_path / "out.json").exists()
