"""``ml-patterns bench --precision bf16``: every train step in bf16-mixed beside float32, per
contender, the matmul peak in both dtypes, each row measured against the peak of its own precision
(structure and arithmetic only: no speed assertions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml_patterns import parity
from ml_patterns_app.cli import main
from ml_patterns_bench import peak
from ml_patterns_bench.common import QUICK_CONTENDERS, BenchContext, peak_key

# The bf16 run below is shared by the module: its tests run on one xdist worker.


@pytest.fixture(scope="module")
def report(default_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = ["bench", "--quick", "--precision", "bf16", "--only", "mlp", "--device", "cpu", "--threads", "1"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(peak.SIZES, "cpu", 256)  # the peak's rows and arithmetic are under test, not its size
        assert main([*args, "--out", str(out), "--data", str(default_dataset[0])]) == 0
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


def test_every_step_runs_in_both_precisions_and_the_peak_in_both_dtypes(report):
    data, markdown = report
    assert data["environment"]["precision"]["policy"] == "bf16"
    assert data["environment"]["precision"]["jax_default_matmul_precision"] == "highest"  # float32 rows: full float32
    assert set(data["matmul_peak_gflops"]) == {"cpu", "cpu bfloat16"}
    steps = [row for row in data["results"] if row["benchmark"] == "mlp_train_step"]
    pairs = {(row["precision"], row["contender"]) for row in steps}
    assert pairs == {(p, c) for p in ("float32", "bf16-mixed") for c in QUICK_CONTENDERS}
    for row in steps:
        peak = data["matmul_peak_gflops"][peak_key(row)]["peak"]
        assert row["fraction_of_peak"] == pytest.approx(row["gflops"] / peak)
        assert row["workload"].endswith(", bf16-mixed") == (row["precision"] == "bf16-mixed")
    assert "bf16-mixed throughput over float32" in markdown


def test_bf16_rows_agree_across_contenders_and_differ_from_float32(report):
    data, _ = report
    losses = {
        (row["precision"], row["contender"]): np.array(row["warmup_losses"])
        for row in data["results"]
        if row["benchmark"] == "mlp_train_step"
    }
    eager, jitted = losses[("bf16-mixed", "torch eager")], losses[("bf16-mixed", "jax.jit")]
    tolerance = parity.bf16_tolerance("loss", float(np.abs(eager).max()))
    np.testing.assert_allclose(jitted, eager, rtol=0.0, atol=tolerance.atol)
    assert not np.array_equal(eager, losses[("float32", "torch eager")])  # bfloat16 really ran


def test_step_precisions_follow_the_flag(tmp_path):
    def context(precision):
        return BenchContext(data_dir=tmp_path, quick=True, devices=("cpu",), threads=1, precision=precision)

    assert context("float32").step_precisions == context("tf32").step_precisions == ("float32",)
    assert context("bf16").step_precisions == ("float32", "bf16-mixed")
