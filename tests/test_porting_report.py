"""The porting toolkit's decisions, from tables: the bounded float64 fallback and the training report
(the verdict's own tests: ``tests/test_verdict.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from ml_patterns.parity import FALLBACK_BOUND, GRADIENT
from ml_patterns.verdict import judge
from ml_patterns_app.porting import LayerReport, Row, TrainingReport
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


def _report(other_factor: float) -> TrainingReport:
    losses = np.linspace(2.0, 1.0, 50)
    ensemble = losses * (1 + np.array([[1e-7], [-2e-7], [3e-7]]) * np.arange(50) / 50)
    row = Row("w -> kernel", "w", "kernel", "gradient", (2,), (2,), 0.0, 0.0, GRADIENT, True)
    gradients = LayerReport("gradients", (row,), None, "The loss and every gradient agree.")
    other = losses * other_factor
    verdict = judge(losses, other, ensemble, losses)
    return TrainingReport(losses, other, ensemble, losses, verdict, gradients, "")


def test_training_report_verdict_and_plot(tmp_path):
    report = _report(1 + 1e-7)
    assert report.passed and report.first_bad_step is None and report.worst_ratio < 1
    assert "agree (decided by float64 anchor)" in report.summary()
    failing = _report(1 + 1e-4)
    assert not failing.passed and failing.first_bad_step == 0 and "DISAGREE" in failing.summary()
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
