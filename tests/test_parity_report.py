"""The framework-free comparator (ml_patterns.parity) and the ``ml-patterns parity`` report."""

import json

import numpy as np
import pytest

from ml_patterns import parity
from ml_patterns.parity import ROUNDING_FACTOR, Tolerance, compare

TIGHT = Tolerance(rtol=1e-6, atol=1e-6)


def test_equal_trees_pass_with_exact_statistics():
    a = {"outputs": {"x": np.array([1.0, 2.0]), "y": 3.0}, "loss": np.float32(0.5)}
    report = compare(a, a, TIGHT)
    assert report.passed and [r.path for r in report.rows] == ["outputs/x", "outputs/y", "loss"]
    assert all(r.max_abs_diff == 0 and r.max_rel_diff == 0 for r in report.rows)
    report.raise_if_failed()


def test_differences_are_measured_and_named_by_path():
    expected = {"outputs": {"logits": np.array([[1.0, -2.0], [0.0, 4.0]])}}
    actual = {"outputs": {"logits": np.array([[1.0, -2.0], [3e-6, 4.004]])}}
    report = compare(expected, actual, TIGHT, names=("torch", "jax"))
    (row,) = report.rows
    assert not report.passed and report.failures == (row,)
    assert row.max_abs_diff == pytest.approx(0.004) and row.max_rel_diff == pytest.approx(0.001)
    with pytest.raises(AssertionError, match="outputs/logits"):
        report.raise_if_failed()
    assert "jax against torch" in report.format_table()


def test_the_tolerance_is_allclose_elementwise():
    expected = {"g": np.array([100.0, 1e-3])}
    tol = Tolerance(rtol=1e-3, atol=1e-6)
    assert compare(expected, {"g": np.array([100.09, 1e-3])}, tol).passed  # 0.09 <= 1e-6 + 0.1
    assert not compare(expected, {"g": np.array([100.0, 1.01e-3])}, tol).passed  # 1e-5 > 1e-6 + 1e-6


def test_shape_mismatch_missing_paths_and_nan_fail_with_a_note():
    expected = {"a": np.zeros((2, 3)), "b": np.zeros(2), "c": np.array([np.nan])}
    actual = {"a": np.zeros((3, 2)), "c": np.array([np.nan]), "d": np.zeros(1)}
    rows = {r.path: r for r in compare(expected, actual, TIGHT, names=("torch", "jax")).rows}
    assert rows["a"].note == "shape mismatch" and not rows["a"].passed
    assert rows["b"].note == "missing in jax" and rows["b"].actual_shape is None
    assert rows["d"].note == "missing in torch"
    assert rows["c"].note == "NaN" and not rows["c"].passed  # NaN on both sides is still a failure


def test_per_section_tolerances_and_an_unknown_section():
    expected = {"outputs": {"y": np.array([1.0])}, "gradients": {"w": np.array([1.0])}}
    actual = {"outputs": {"y": np.array([1.00001])}, "gradients": {"w": np.array([1.00001])}}
    report = compare(expected, actual, {"outputs": Tolerance(0, 1e-4), "gradients": TIGHT})
    assert [r.passed for r in report.rows] == [True, False]
    with pytest.raises(KeyError, match="no tolerance for 'gradients/w'"):
        compare(expected, actual, {"outputs": TIGHT})


def test_a_float64_reference_tells_rounding_from_a_bug():
    truth = np.array([0.0, 1e-4, 50.0])
    expected = truth + np.array([0.0, 3e-6, 2e-6])  # torch's float32 rounding
    rounding = {"g": truth + np.array([0.0, -2e-6, -3e-6])}  # as far from the truth, other way
    bug = {"g": truth + np.array([0.0, 2e-4, 0.0])}
    assert not compare({"g": expected}, rounding, TIGHT).passed  # elementwise, the small one fails
    (row,) = compare({"g": expected}, rounding, TIGHT, reference={"g": truth}).rows
    assert row.passed and row.expected_error == pytest.approx(3e-6) and row.actual_error == pytest.approx(3e-6)
    assert row.note.startswith("passed by float64-reference fallback: max|actual - f64| 3.00e-06 <= 2 x")
    (row,) = compare({"g": expected}, bug, TIGHT, reference={"g": truth}).rows
    assert not row.passed and row.actual_error == pytest.approx(2e-4)
    assert row.note.startswith("float64-reference fallback refused")


def test_the_float64_fallback_is_bounded():
    # Both sides equally far from the truth, but by 1e-3 of a leaf whose largest entry is 1: beyond
    # FALLBACK_BOUND (1e-4), so not rounding, whatever the reference says.
    truth = np.array([1.0, 0.0])
    expected, actual = truth + np.array([0.0, 6e-4]), truth + np.array([0.0, -6e-4])
    (row,) = compare({"g": expected}, {"g": actual}, TIGHT, reference={"g": truth}).rows
    assert not row.passed and row.actual_error <= ROUNDING_FACTOR * row.expected_error
    assert "1.20e-03 > 0.0001 x max|f64| 1.00e+00" in row.note


def test_bfloat16_leaves_are_compared_in_float64():
    import ml_dtypes

    value = np.array([1.5, -2.25], dtype=ml_dtypes.bfloat16)
    assert compare({"x": value}, {"x": np.array([1.5, -2.25])}, TIGHT).passed


def test_leaves_that_are_not_numbers_and_trees_that_are_not_dicts():
    with pytest.raises(TypeError, match="x: cannot compare a leaf of dtype <U"):
        compare({"x": np.array(["a"])}, {"x": np.array(["a"])}, TIGHT)
    with pytest.raises(TypeError, match="expected a dict"):
        compare([1.0], [1.0], TIGHT)


def test_table_lists_failures_only_on_request():
    report = compare({"a": np.ones(2), "b": np.ones(2)}, {"a": np.ones(2), "b": np.zeros(2)}, TIGHT)
    full, failures = report.format_table(), report.format_table(failures_only=True)
    assert "a " in full.splitlines()[2] and "FAIL" in full
    assert len(failures.splitlines()) == len(full.splitlines()) - 1
    assert full.splitlines()[-1].startswith("1 of 2 passed")


def test_the_parity_suite_uses_the_one_tolerance_table():
    from parity_tests import tolerances

    for name in ("FORWARD", "LOSS", "GRADIENT", "HISTORY", "EXACT", "GPU"):
        assert getattr(tolerances, name) is getattr(parity, name)


def test_tolerance_lookup_by_quantity_and_device():
    assert parity.tolerance("history") == Tolerance(rtol=1e-4, atol=1e-6)
    assert parity.tolerance("history", "gpu") == Tolerance(rtol=1e-3, atol=1e-6)
    assert parity.tolerance("gradient", "gpu").rtol > parity.GRADIENT.rtol
    with pytest.raises(KeyError, match="no tolerance for 'outputs' on 'cpu'"):
        parity.tolerance("outputs")


# The command: a tiny multi-task model (both tests share its compilation; the autoencoder's report
# runs the same code, and its parity is parity_tests/test_models.py's).
TINY = {"architecture": "multitask", "d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, "max_len": 288}


@pytest.mark.slow
def test_parity_command_passes_on_the_default_dataset(default_dataset, tmp_path, capsys):
    from ml_patterns_app.cli import main

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    assert main(["parity", "--data", str(default_dataset[0]), "--config", str(config), "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    for expected in (
        "== multitask: SmilesMultiTaskModel, batch 4x",
        "outputs/mlm",
        "outputs/TPSA",
        "loss/total",
        "loss/mlm",
        "gradients/backbone.layers.0.attention.q_proj.weight",
        "gradients/heads.TPSA.out.bias",
        "parity: all rows passed",
    ):
        assert expected in out
    assert "== autoencoder" not in out  # "architecture" in the config picks one


def test_parity_command_fails_and_names_the_parameter(default_dataset, tmp_path, capsys, monkeypatch):
    import jax_impl.state
    from ml_patterns_app.cli import main
    from ml_patterns_app.porting import parity_report

    build_pair = parity_report.build_pair

    def broken_pair(config):
        torch_model, jax_model = build_pair(config)
        arrays = jax_impl.state.to_numpy(jax_model)
        arrays["backbone.layers.0.norm2.weight"] = arrays["backbone.layers.0.norm2.weight"] * 1.01
        jax_impl.state.from_numpy(jax_model, arrays)
        return torch_model, jax_model

    monkeypatch.setattr(parity_report, "build_pair", broken_pair)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    assert main(["parity", "--data", str(default_dataset[0]), "--config", str(config), "--batch-size", "4"]) == 1
    out = capsys.readouterr().out
    failing = [line for line in out.splitlines() if "FAIL" in line]
    assert any(line.startswith("gradients/backbone.layers.0.norm2.weight") for line in failing)
    assert "parity: FAILED" in out


def test_parity_command_rejects_a_bad_config(default_dataset, tmp_path, capsys):
    from ml_patterns_app.cli import main

    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"d_modle": 16}))
    assert main(["parity", "--data", str(default_dataset[0]), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"ml-patterns parity: error: {config}: unknown ModelConfig field(s) ['d_modle']" in err
    assert "Traceback" not in err
    config.write_text("[1, 2]")
    assert main(["parity", "--data", str(default_dataset[0]), "--config", str(config)]) == 2
    assert "expected a JSON object of ModelConfig fields, got list" in capsys.readouterr().err
