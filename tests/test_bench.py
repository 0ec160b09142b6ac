"""The benchmark suite runs end to end and reports what it claims (structure only: no speed assertions)."""

from __future__ import annotations

import importlib
import inspect
import os
import threading

import numpy as np
import pytest

from ml_patterns.errors import DestinationError
from ml_patterns.machine import cpu_count, restrict_cpus
from ml_patterns_app.cli import main
from ml_patterns_bench import runner
from ml_patterns_bench.common import CONTENDERS, Contender, plan_repeats, time_call

# Equal losses prove the contenders ran the same workload: the forward tolerance of docs/PARITY.md
# (copied weights), here over the first Adam steps too.
LOSS_RTOL = {"cpu": 1e-5, "gpu": 1e-4}
# The --quick run (tests/conftest.py) is shared with tests/test_bench_training.py: one xdist worker.


def test_quick_run_records_the_environment_and_the_policy(quick_report):
    _, report = quick_report
    env, ctx = report["environment"], report["context"]
    assert report["quick"] is True and ctx["quick"] is True
    assert ctx["threads"] == cpu_count() == env["torch"]["intra_op_threads"]
    assert "cpu" in ctx["devices"] and "torch.compile" not in ctx["contenders"]
    assert env["versions"]["torch"] and env["versions"]["jax"] and env["jax"]["devices"]["cpu"]
    assert env["precision"]["policy"] == "float32"
    assert env["precision"]["jax_default_matmul_precision"] == "highest"
    assert env["precision"]["torch.get_float32_matmul_precision()"] == "highest"
    assert env["precision"]["torch.backends.cuda.matmul.allow_tf32"] is False
    cpu_peak = report["matmul_peak_gflops"]["cpu"]
    assert cpu_peak["peak"] == max(cpu_peak["torch"], cpu_peak["jax"]) > 0


def test_quick_run_rows_are_complete(quick_report):
    _, report = quick_report
    results = report["results"]
    assert {"matmul_peak", "mlp_train_step", "lazy_dataset", "batch_sampler"} <= {r["benchmark"] for r in results}
    for row in results:
        assert row["timing"]["median_s"] > 0 and row["throughput"]["value"] > 0, row
        if row["contender"] == "jax.jit":
            assert row["compile_s"] > 0, row
        if row["flops_per_call"]:
            assert row["gflops"] > 0 and row["fraction_of_peak"] > 0 and row["fraction_of_framework_peak"] > 0, row
    for row in report["skipped"]:
        assert row["skipped"], row
    mlp = [r for r in results if r["benchmark"] == "mlp_train_step"]
    assert {r["contender"] for r in mlp} == {"torch eager", "jax.jit"}
    for row in mlp:
        assert row["flops_per_call"] > 0 and row["peak_memory"]["how"]


def test_contenders_train_the_same_mlp(quick_report):
    _, report = quick_report
    by_workload = {}
    for row in report["results"]:
        if row["benchmark"] == "mlp_train_step":
            by_workload.setdefault((row["workload"], row["device"]), {})[row["contender"]] = row["warmup_losses"]
    assert by_workload
    for (workload, device), losses in by_workload.items():
        assert len(losses["torch eager"]) == 3
        np.testing.assert_allclose(losses["jax.jit"], losses["torch eager"], rtol=LOSS_RTOL[device], err_msg=workload)


def test_quick_run_writes_markdown_and_a_png(quick_report):
    out, report = quick_report
    markdown = (out / "bench.md").read_text()
    assert "| benchmark | workload | contender | device | median |" in markdown
    assert "precision policy `float32`" in markdown and "quick run" in markdown
    mlp_rows = sum(r["benchmark"] == "mlp_train_step" for r in report["results"])
    # one line per row in the table, one per workload in the summary relative to torch eager
    assert markdown.count("| mlp_train_step |") == mlp_rows + 1
    assert "| mlp_train_step | small: batch 64" in markdown.split("relative to torch eager")[1]
    png = (out / "bench.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


# Warnings from inside torch while dynamo compiles a train step (torch 2.13), not from our code:
# - compiling the optimizer step imports torch.utils.mkldnn, which applies torch's own deprecated
#   @torch.jit.script_method at import time;
# - resuming after the graph break at backward(), dynamo probes .grad of the non-leaf loss; torch
#   hides that warning from its own logging, but pytest's "error" filter raises it first.
torch_compile_warnings = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning",
    "ignore:The .grad attribute of a Tensor that is not a leaf Tensor is being accessed:UserWarning",
)


@torch_compile_warnings
def test_torch_compile_contender_times_compile_apart():
    # inductor's cold compile is ~50 s on two cores; aot_eager runs the same path (dynamo, AOT
    # autograd, the warm-up accounting) in seconds.
    from ml_patterns_bench import harness, mlp

    step = mlp.step(mlp.make_problem(mlp.MLPSize("tiny", 8, 16, 2)))
    with harness.configured(cpu_count(), "float32"):
        compiled = harness.measure(step, Contender("torch.compile", "torch", "aot_eager"), "cpu", quick=True)
        eager = harness.measure(step, CONTENDERS["torch eager"], "cpu", quick=True)
        jitted = harness.measure(step, CONTENDERS["jax.jit"], "cpu", quick=True)
    assert not isinstance(compiled, str), compiled
    assert compiled.compile_s > 0 and eager.compile_s is None and jitted.compile_s > 0
    np.testing.assert_allclose(compiled.warmup_losses, eager.warmup_losses, rtol=LOSS_RTOL["cpu"])
    np.testing.assert_allclose(jitted.warmup_losses, eager.warmup_losses, rtol=LOSS_RTOL["cpu"])
    assert jitted.peak_memory["bytes"] > 0 and eager.peak_memory["bytes"] is None
    assert jitted.peak_memory["measure"] == "static estimate" and eager.peak_memory["measure"] == "none"
    # A whole train step breaks the graph at loss.backward(): reported, and compiled without fullgraph.
    assert compiled.extra["graph_breaks"] == 1 and "backward" in compiled.extra["break_reasons"][0]
    assert "graph_breaks" not in eager.extra


def test_a_failing_torch_compile_is_skipped_with_its_reason():
    from ml_patterns_bench import harness, mlp

    step = mlp.step(mlp.make_problem(mlp.MLPSize("tiny", 8, 16, 2)))
    with harness.configured(cpu_count(), "float32"):
        reason = harness.measure(step, Contender("torch.compile", "torch", "no_such_backend"), "cpu", quick=True)
    assert isinstance(reason, str) and reason.startswith("torch.compile failed") and "no_such_backend" in reason


def test_gpu_requested_without_one_is_a_clear_error(default_dataset, tmp_path, capsys):
    from ml_patterns_bench import harness

    if any(runtime.device("gpu") is not None for runtime in harness.RUNTIMES.values()):
        pytest.skip("this machine has a GPU")
    args = ["bench", "--device", "gpu", "--only", "data", "--out", str(tmp_path), "--data", str(default_dataset[0])]
    assert main(args) == 2
    assert "--device gpu: no CUDA GPU found" in capsys.readouterr().err
    assert not (tmp_path / "bench.json").exists()


def test_unknown_benchmark_is_refused_with_the_valid_names(tmp_path, capsys):
    with pytest.raises(SystemExit, match="^2$") as exit_info:
        main(["bench", "--only", "nope", "--out", str(tmp_path), "--data", str(tmp_path / "data")])
    assert exit_info.value.code == 2
    assert "argument --only: invalid choice: 'nope' (choose from" in capsys.readouterr().err


def test_every_workload_takes_the_context_and_every_contender_has_a_framework():
    for name, module in runner.BENCHMARKS.items():
        run = importlib.import_module(module).run
        assert list(inspect.signature(run).parameters) == ["ctx"], name
    assert {contender.framework for contender in CONTENDERS.values()} == {"torch", "jax"}
    assert [name for name, c in CONTENDERS.items() if not c.quick] == ["torch.compile"]


@pytest.mark.parametrize("names", [runner.RESULT_FILES, runner.EARLIER_RESULT_FILES], ids=["current", "earlier"])
def test_an_unmarked_folder_of_earlier_results_may_be_replaced_and_one_with_other_files_not(tmp_path, names):
    out = tmp_path / "out"
    out.mkdir()
    for name in names:  # written before results folders were marked
        (out / name).write_text("earlier results")
    runner.check_results_destination(out, tmp_path / "data")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DestinationError, match=r"not a folder of benchmark results written by ml-patterns"):
        runner.check_results_destination(out, tmp_path / "data")


def test_a_malformed_row_names_the_benchmark():
    with pytest.raises(ValueError, match=r"benchmark 'broken' returned row 0 without \['timing', 'throughput'\]"):
        runner._checked("broken", [{"benchmark": "b", "workload": "w", "contender": "c", "device": "cpu"}])


def test_time_call_synchronizes_once_per_sample():
    calls = {"fn": 0, "sync": 0}
    timing = time_call(
        lambda: calls.__setitem__("fn", calls["fn"] + 1),
        repeats=4,
        warmup=2,
        number=3,
        sync=lambda: calls.__setitem__("sync", calls["sync"] + 1),
    )
    assert calls == {"fn": 2 + 4 * 3, "sync": 1 + 4}
    assert timing.repeats == 4 and timing.number == 3 and timing.median_s > 0


@pytest.mark.parametrize(
    ("call_s", "quick", "expected"),
    [
        (0.2, False, (1, 10)),  # 2 s of samples
        (0.001, False, (10, 50)),  # batched to 10 ms samples, capped at 50
        (5.0, False, (1, 7)),  # at least 7 samples
        (0.001, True, (10, 5)),
    ],
)
def test_plan_repeats(call_s, quick, expected):
    assert plan_repeats(call_s, quick) == expected


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or cpu_count() < 2, reason="needs CPU affinity and 2 CPUs")
def test_restrict_cpus_pins_every_thread_and_restores():
    before = os.sched_getaffinity(0)
    started, release = threading.Event(), threading.Event()
    worker = threading.Thread(target=lambda: (started.set(), release.wait()))
    worker.start()
    started.wait()
    try:
        with restrict_cpus(1) as record:
            assert record["threads"] == 1
            assert len(os.sched_getaffinity(0)) == 1 and len(os.sched_getaffinity(worker.native_id)) == 1
        assert os.sched_getaffinity(0) == before == os.sched_getaffinity(worker.native_id)
    finally:
        release.set()
        worker.join()
    with pytest.raises(ValueError, match="--threads must be between 1 and"):
        with restrict_cpus(len(before) + 1):
            pass


def test_every_memory_cell_says_what_it_measured():
    from ml_patterns_bench.runner import _memory

    assert _memory({"bytes": 3 * 2**20, "measure": "allocator peak"}) == "3 MiB (allocator peak)"
    assert _memory({"bytes": 3 * 2**20, "measure": "static estimate"}) == "3 MiB (XLA estimate)"
    assert _memory({"bytes": None, "how": "n/a", "measure": "none"}) == ""
