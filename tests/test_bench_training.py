"""bench/training.py: the rows it reports, the FLOP count, the interleaving (structure only: no speed assertions)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from torch.utils.flop_counter import FlopCounterMode

import torch_impl.models
import torch_impl.molecules.models
import torch_impl.training
from ml_patterns.errors import UsageError
from ml_patterns.molecules.prepare import read_manifest
from ml_patterns_bench import flops, harness, training
from ml_patterns_bench.common import QUICK_CONTENDERS, Contender
from ml_patterns_bench.models import ModelSize, make_problem
from tests.bench_quick import TINY
from tests.test_models_bench import written_out_attention

WORKLOAD = TINY.describe("multitask")
# Three AdamW steps from copied weights: the training-history tolerance of docs/PARITY.md (CPU).
LOSS_RTOL = 1e-4
# The bench --quick run is shared with tests/test_bench.py (tests/conftest.py): one xdist worker.


@pytest.fixture(scope="module")
def quick_rows(quick_report):
    """The training rows of the shared ``bench --quick`` run (tests/bench_quick.py)."""
    return [row for row in quick_report[1]["results"] if row["benchmark"] in (training.STEP, training.OVERHEAD)]


def by(rows, benchmark):
    return {(row["workload"], row["contender"]): row for row in rows if row["benchmark"] == benchmark}


def test_train_step_rows_count_flops_and_agree_across_contenders(quick_rows, default_dataset):
    steps = by(quick_rows, training.STEP)
    assert set(steps) == {(WORKLOAD, contender) for contender in QUICK_CONTENDERS}  # quick: one size
    config = TINY.config(read_manifest(default_dataset[0]), "multitask")
    for row in steps.values():
        assert "skipped" not in row, row
        assert row["device"] == "cpu" and row["timing"]["median_s"] > 0 and row["timing"]["repeats"] == 5
        assert row["flops_per_call"] == flops.forward_backward(config, TINY.batch, TINY.length) > 0
        assert row["steps_per_s"] == pytest.approx(1 / row["timing"]["median_s"])
        assert row["throughput"] == {
            "value": pytest.approx(TINY.batch / row["timing"]["median_s"]),
            "unit": "samples/s",
        }
        assert len(row["warmup_losses"]) == 3 and all(np.isfinite(row["warmup_losses"]))
    eager, jitted = steps[WORKLOAD, "torch eager"], steps[WORKLOAD, "jax.jit"]
    assert eager["compile_s"] is None and jitted["compile_s"] > 0
    # The Trainer's step runs its own programs: no single program's static estimate, and on a CPU no
    # allocator statistics either; the row says so rather than reporting another quantity.
    assert jitted["peak_memory"]["bytes"] is None and jitted["peak_memory"]["measure"] == "none"
    np.testing.assert_allclose(jitted["warmup_losses"], eager["warmup_losses"], rtol=LOSS_RTOL)
    assert eager["warmup_losses"][2] < eager["warmup_losses"][0]  # the steps train


def test_the_jax_step_row_times_the_trainers_own_step(default_dataset):
    """Not the Trainer's programs fused into an outer jit: the very callable ``Trainer.fit`` calls."""
    root, manifest = default_dataset
    problem = make_problem(root, manifest, "multitask", TINY)
    fn, state, (batch,) = training.step(problem).jax(harness.RUNTIMES["jax"].device("cpu"))
    trainer = training.trainer("jax", problem, harness.RUNTIMES["jax"].device("cpu"))
    assert fn is trainer.train_step and not hasattr(fn, "lower")
    assert set(jax.eval_shape(fn, state, batch)[1]) == {"loss"}  # traced, not compiled: what it returns


def test_overhead_rows_compare_each_loop_with_the_bare_loop(quick_rows):
    overhead = [row for row in quick_rows if row["benchmark"] == training.OVERHEAD]
    jax_compile_s = by(quick_rows, training.STEP)[WORKLOAD, "jax.jit"]["compile_s"]
    molecules = training.QUICK_OVERHEAD_BATCHES * TINY.batch
    assert len(overhead) == len(training.VARIANTS) * len(QUICK_CONTENDERS)
    for contender in QUICK_CONTENDERS:
        rows = {row["workload"].split(":")[0]: row for row in overhead if row["contender"] == contender}
        assert set(rows) == set(training.VARIANTS)
        for row in rows.values():
            assert "skipped" not in row, row
            assert row["timing"]["repeats"] == training.QUICK_ROUNDS and row["timing"]["median_s"] > 0
            assert row["throughput"]["value"] == pytest.approx(molecules / row["timing"]["median_s"])
            assert row["compile_s"] == (jax_compile_s if contender == "jax.jit" else None)
            assert f"{training.QUICK_OVERHEAD_BATCHES} pre-collated batches" in row["detail"]
            assert np.isfinite(row.get("overhead_pct", 0.0)) and np.isfinite(row.get("preparation_pct", 0.0))
        for variant in (training.FIT, training.FIT_CALLBACKS):
            assert {"overhead_pct", "overhead_pct_of_minima"} <= set(rows[variant])
        assert "preparation_pct" in rows[training.STEPS_ONLY]
        assert not {"overhead_pct", "preparation_pct"} & set(rows[training.BARE])


def test_overhead_stats_pair_each_round_with_the_bare_loop():
    samples = {
        training.BARE: [1.0, 2.0, 4.0],
        training.STEPS_ONLY: [0.9, 1.9, 3.0],  # per round 0.9, 0.95, 0.75 of the bare loop
        training.FIT: [1.2, 2.04, 4.2],  # per round 1.2, 1.02, 1.05; fastest 1.2 against 1.0
        training.FIT_CALLBACKS: [1.0, 2.0, 4.0],
    }
    stats = training.overhead_stats(samples)
    assert stats[training.BARE] == {}
    assert stats[training.STEPS_ONLY] == {"preparation_pct": pytest.approx(10.0)}
    assert stats[training.FIT] == {"overhead_pct": pytest.approx(5.0), "overhead_pct_of_minima": pytest.approx(20.0)}
    assert stats[training.FIT_CALLBACKS] == {"overhead_pct": 0.0, "overhead_pct_of_minima": 0.0}


def test_flop_count_matches_torch_flop_counter(default_dataset):
    # An independent count: torch's FlopCounterMode sees every mm/bmm of forward and backward.
    problem = make_problem(default_dataset[0], read_manifest(default_dataset[0]), "multitask", TINY)
    model = written_out_attention(torch_impl.molecules.models.build_model(problem.config, weights=problem.weights))
    with FlopCounterMode(display=False) as counter:
        model.compute_loss(torch_impl.training.to_device(problem.batch)).backward()
    assert flops.forward_backward(problem.config, TINY.batch, TINY.length) == counter.get_total_flops()


def test_interleaved_warms_up_then_rotates_the_order():
    calls = []
    variants = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    samples = training.interleaved(variants, rounds=4)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab") + list("abc")
    assert {name: len(seconds) for name, seconds in samples.items()} == {"a": 4, "b": 4, "c": 4}


def test_a_failing_torch_compile_is_skipped_with_its_reason(default_dataset):
    problem = make_problem(default_dataset[0], read_manifest(default_dataset[0]), "multitask", TINY)
    with harness.configured(1, "float32"):
        reason = harness.measure(
            training.step(problem), Contender("torch.compile", "torch", "no_such_backend"), "cpu", quick=True
        )
    assert "no_such_backend" in reason


def test_a_split_smaller_than_the_batch_is_refused(default_dataset):
    root, manifest = default_dataset
    huge = ModelSize("huge", 16, 1, 2, batch=manifest["splits"]["train"] + 1, length=16)
    with pytest.raises(UsageError, match="fewer than the batch"):
        make_problem(root, manifest, "multitask", huge)
