"""``ml-patterns compare``, end to end on a slice of the default dataset (and a broken JAX side that
its verdict must fail), and its parts: the report logic, the progress display, Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time

import pytest

from ml_patterns_app.cli import main
from ml_patterns_app.compare import report as compare_report
from ml_patterns_app.compare import runner
from ml_patterns_app.compare.report import build_report, write_report
from ml_patterns_app.compare.settings import FLOOR_LABEL, FLOOR_RUN, CompareSettings
from ml_patterns_app.porting.floor import FLOOR_MULTIPLE


def test_compare_end_to_end_and_a_broken_jax_side_fails(default_dataset, tmp_path, capsys, monkeypatch):
    # Keep each worker's job and result, and the initial weights, to rerun the JAX side broken below.
    runs, weights = {}, tmp_path / "initial.safetensors"
    run_worker = runner.run_worker

    def recording(backend, job, out, label=None):
        result = run_worker(backend, job, out, label)
        if job["write_weights"]:
            shutil.copy(job["weights"], weights)
        runs[label or backend] = (job, result)
        return result

    monkeypatch.setattr(runner, "run_worker", recording)
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
    for label in ("PyTorch (eager)", "JAX (jax.jit)", FLOOR_LABEL):  # progress, a line per epoch off a terminal
        assert f"{label:<16} epoch 2/2  train_loss " in printed and f"{label:<16} done" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["parity"]["passed"] and len(results["parity"]["epochs"]) == 2
    steps = results["parity"]["steps"]
    assert steps["count"] == 6 and steps["first_outside"] is None and steps["worst_ratio"] <= FLOOR_MULTIPLE
    assert steps["losses"]["torch"] != steps["losses"][FLOOR_RUN]  # one ulp off: not the same run
    for backend in ("torch", "jax"):
        assert set(results["test_metrics"][backend]) >= {"MAE TPSA", "MAE MolWt", "masked-token accuracy"}
        assert results["speed"][backend]["steps_per_s"] > 0
        assert results["backends"][backend]["versions"]
    assert results["speed"]["jax"]["compilations"] >= 2  # at least one train and one eval compilation
    assert results["speed"]["torch"]["compilations"] is None
    assert sorted(p.name for p in out.iterdir()) == sorted(compare_report.FILES)
    assert (out / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A JAX side with a porting bug (its learning rate 1.5x torch's) from the same weights: the verdict fails.
    job, _ = runs["jax"]
    settings = {**job["settings"], "learning_rate": 1.5 * job["settings"]["learning_rate"]}
    broken = run_worker("jax", {**job, "settings": settings, "weights": str(weights)}, tmp_path / "broken.json")
    results = {"torch": runs["torch"][1], "jax": broken, FLOOR_RUN: runs[FLOOR_LABEL][1]}
    report = build_report(CompareSettings(), default_dataset[1], results, default_dataset[0])
    assert not report["parity"]["passed"] and compare_report.DISAGREE in report["verdict"]
    assert report["parity"]["steps"]["first_outside"] >= 1  # step 0 (before any update) agrees
    assert report["parity"]["steps"]["worst_ratio"] > 10 * FLOOR_MULTIPLE


def fake_result(train_losses, val_losses, step_losses=(2.0, 1.5, 1.0)):
    epochs = list(range(len(train_losses)))
    return {
        "history": {"epoch": epochs, "train_loss": train_losses, "val_loss": val_losses},
        "step_losses": list(step_losses),
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


def fake_results(jax_steps=(2.0, 1.5, 1.0), jax_train=(2.0, 1.0), floor_steps=(2.0, 1.5, 1.0)):
    return {
        "torch": fake_result([2.0, 1.0], [3.0, 2.0]),
        "jax": fake_result(list(jax_train), [3.0, 2.0], jax_steps),
        FLOOR_RUN: fake_result([2.0, 1.0], [3.0, 2.0], floor_steps),
    }


@pytest.mark.parametrize(
    ("jax_steps", "jax_train", "floor_steps", "passed", "first"),
    [
        ((2.0, 1.5, 1.0), (2.0, 1.0), (2.0, 1.5, 1.0), True, None),
        # 1e-5 at step 1: beyond 5 x the loss tolerance (1.7e-6 at 1.5) when the floor run agreed exactly ...
        ((2.0, 1.5 * (1 + 1e-5), 1.0), (2.0, 1.0), (2.0, 1.5, 1.0), False, 1),
        ((2.0, 1.5 * (1 + 5e-5), 1.0), (2.0, 1.0), (2.0, 1.5, 1.0), False, 1),
        # ... within 5 x the floor when float32 alone moved torch by 2e-5 by then (and the floor keeps it)
        ((2.0, 1.5 * (1 + 5e-5), 1.0 + 9e-5), (2.0, 1.0), (2.0, 1.5 * (1 - 2e-5), 1.0), True, None),
        # an epoch value beyond its floor fails too
        ((2.0, 1.5, 1.0), (2.0, 1.0 + 1e-4), (2.0, 1.5, 1.0), False, None),
    ],
)
def test_report_judges_drift_against_the_noise_floor(default_dataset, jax_steps, jax_train, floor_steps, passed, first):
    results = fake_results(jax_steps, jax_train, floor_steps)
    report = build_report(CompareSettings(), default_dataset[1], results, default_dataset[0])
    assert report["parity"]["passed"] is passed
    assert report["parity"]["steps"]["first_outside"] == first
    assert (compare_report.AGREE in report["verdict"]) is passed
    assert report["noise_floor"]["multiple"] == FLOOR_MULTIPLE
    assert report["speed"]["torch"]["warmup_s"] == pytest.approx(1.0)
    assert report["speed"]["torch"]["steps_per_s"] == pytest.approx(10.0)
    assert "torch rerun with its initial weights one ulp off" in compare_report.format_summary(report)


def test_an_interrupted_write_leaves_the_previous_report(default_dataset, tmp_path, monkeypatch):
    results = fake_results()
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
