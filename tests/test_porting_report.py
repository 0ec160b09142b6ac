"""The porting toolkit's decisions, from tables: the bounded float64 fallback and the noise-floor verdict."""

from __future__ import annotations

import numpy as np
import pytest

from ml_patterns.parity import FALLBACK_BOUND, GRADIENT, LOSS
from ml_patterns_app.porting import LayerReport, Row, TrainingReport, drift_and_floor
from ml_patterns_app.porting.report import compare_values

# A gradient whose middle entry is a sum that cancelled: both sides are 1e-6 off the float64 truth.
TRUTH = np.array([1.0, 3e-8, -2.0])


@pytest.mark.parametrize(
    ("torch_value", "nnx_value", "passed", "note"),
    [
        ([1.0, 3e-8, -2.0], [1.0 + 1e-6, 3e-8, -2.0], True, ""),  # within rtol 1e-5
        ([1.0, 1.0e-6, -2.0], [1.0, -1.2e-6, -2.0], True, "passed by float64-reference fallback"),
        ([1.0, 1.0e-6, -2.0], [1.0, -5e-6, -2.0], False, "fallback refused: max|nnx - f64| 5.03e-06 > 2 x"),
        # as close to the truth as allowed, but beyond the bound: torch itself is far off here
        ([1.0, 1e-3, -2.0], [1.0, -1e-3, -2.0], False, f"> {FALLBACK_BOUND:g} x max|f64| 2.00e+00"),
        ([1.0, np.nan, -2.0], [1.0, np.nan, -2.0], False, "NaN"),
        ([1.0, 0.0], [1.0, 0.0, 0.0], False, "shape mismatch"),
    ],
)
def test_float64_fallback_is_explicit_and_bounded(torch_value, nnx_value, passed, note):
    _, _, ok, text = compare_values(np.array(torch_value), np.array(nnx_value), GRADIENT, TRUTH)
    assert ok is passed
    assert note in text if note else text == ""


def test_no_fallback_without_a_reference():
    _, _, ok, text = compare_values(np.array([1.0, 1e-6]), np.array([1.0, -1.2e-6]), GRADIENT)
    assert not ok and text == ""


def test_floor_is_the_running_max_of_the_perturbed_run_and_at_least_the_loss_tolerance():
    torch_losses = np.array([2.0, 2.0, 2.0, 2.0])
    perturbed = np.array([2.0, 2.0 + 4e-5, 2.0, 2.0 + 2e-5])
    nnx_losses = np.array([2.0, 2.0 + 1e-5, 2.0 + 6e-5, 2.0])
    drift, floor = drift_and_floor(torch_losses, nnx_losses, perturbed)
    minimum = LOSS.rtol + LOSS.atol / 2.0
    np.testing.assert_allclose(floor, [minimum, 2e-5, 2e-5, 2e-5])
    np.testing.assert_allclose(drift, [0.0, 5e-6, 3e-5, 0.0])


def _report(drift, floor, first_bad):
    steps = len(drift)
    losses = np.linspace(2.0, 1.0, steps)
    row = Row("w -> kernel", "w", "kernel", "gradient", (2,), (2,), 0.0, 0.0, GRADIENT, True)
    gradients = LayerReport("gradients", (row,), None, "The loss and every gradient agree.")
    return TrainingReport(
        losses,
        losses * (1 + np.asarray(drift)),
        losses,
        np.asarray(drift),
        np.asarray(floor),
        5.0,
        gradients,
        first_bad,
        "",
    )


def test_training_report_verdict_and_plot(tmp_path):
    report = _report([0.0, 1e-6, 4e-6], [2e-6, 2e-6, 1e-6], None)
    assert report.passed and report.worst_ratio == pytest.approx(4.0)
    assert "agree" in report.summary()
    assert not _report([0.0, 1e-6, 4e-5], [2e-6, 2e-6, 1e-6], 2).passed
    path = report.plot(tmp_path / "drift.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_report_without_rows_or_with_problems_fails():
    row = Row("w -> kernel", "w", "kernel", "gradient", (2,), (2,), 0.0, 0.0, GRADIENT, True)
    empty = LayerReport("forward", (), None, "")
    assert not empty.passed and "forward: FAIL: nothing was compared" in str(empty)
    partial = LayerReport(
        "gradients", (row,), None, "", problems=("1 NNX parameter(s) without a compared gradient: b",)
    )
    assert not partial.passed and "FAIL: 1 NNX parameter(s) without a compared gradient: b" in str(partial)
    assert LayerReport("gradients", (row,), None, "").passed
