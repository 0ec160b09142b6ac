"""Data parallelism: N ranks or devices train as one device does, on both backends, and alike.

The runs (``parity_tests.distributed_runs``): a masked-token model whose ranks hold unequal numbers
of real tokens, an epoch whose last batch does not divide by N, 30 SGD steps with momentum; torch DDP
over 2 gloo processes and JAX over 2 and 4 simulated CPU devices, each against its own one-device
run (the plain mean loss over the global batch) and against each other. Every step's loss, every
epoch's mean and the final weights agree within the training-history tolerance of PARITY.md (measured:
<= 3e-7 relative). Two negative controls, written as a naive user would over plain DDP, must fail the
same check: the mean of per-rank token means, and the global count with DDP's averaging on top.

Each backend runs in a subprocess of its own (JAX with ``JAX_NUM_CPU_DEVICES=4``, so this process's
JAX keeps its one device); the two run at the same time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ml_patterns.distributed import shard
from parity_tests import distributed_runs
from parity_tests.tolerances import HISTORY

TIMEOUT_S = 300
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = {
        backend: subprocess.Popen(
            [sys.executable, "-m", "parity_tests.distributed_runs", backend, str(out / f"{backend}.json")],
            cwd=ROOT,
            env={**env, "JAX_NUM_CPU_DEVICES": "4"} if backend == "jax" else env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for backend in ("torch", "jax")
    }
    results = {}
    for backend, process in started.items():
        try:
            output, _ = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other in started.values():
                other.kill()
            pytest.fail(f"the {backend} data-parallel run took more than {TIMEOUT_S} s")
        assert process.returncode == 0, f"the {backend} data-parallel run failed:\n{output}"
        results[backend] = json.loads((out / f"{backend}.json").read_text())
    return results


def assert_same_training(actual: dict, expected: dict) -> None:
    for key in ("step_loss", "epoch_loss"):
        np.testing.assert_allclose(actual[key], expected[key], rtol=HISTORY.rtol, atol=HISTORY.atol, err_msg=key)
    for name, value in expected["params"].items():
        np.testing.assert_allclose(actual["params"][name], value, rtol=HISTORY.rtol, atol=HISTORY.atol, err_msg=name)


def test_ranks_hold_unequal_real_tokens_and_an_uneven_last_batch():
    """The premise of the runs: without it, a mean of per-rank means would be right by accident."""
    data, _ = distributed_runs.problem()
    unequal = uneven = 0
    for _, indices in distributed_runs.global_batches():
        uneven += len(indices) % distributed_runs.TORCH_WORLD != 0
        tokens = [
            float(data["mask"][part.indices].sum(axis=1) @ part.weight)
            for part in (
                shard(indices, distributed_runs.TORCH_WORLD, rank) for rank in range(distributed_runs.TORCH_WORLD)
            )
        ]
        unequal += len(set(tokens)) > 1
    assert unequal >= 20 and uneven == distributed_runs.EPOCHS


def test_torch_ddp_trains_as_one_process(runs):
    assert_same_training(runs["torch"]["ddp"], runs["torch"]["reference"])
    assert runs["torch"]["ddp"]["ranks_agree"]


@pytest.mark.parametrize("world_size", distributed_runs.JAX_WORLDS)
def test_jax_sharded_trains_as_one_device(runs, world_size):
    assert_same_training(runs["jax"][f"sharded-{world_size}"], runs["jax"]["reference"])


@pytest.mark.parametrize("world_size", distributed_runs.JAX_WORLDS)
def test_torch_ddp_and_jax_sharded_train_alike(runs, world_size):
    assert_same_training(runs["jax"][f"sharded-{world_size}"], runs["torch"]["ddp"])


@pytest.mark.parametrize("control", ["naive", "double"])
def test_naive_reductions_fail_the_same_check(runs, control):
    """The check can fail: a mean of per-rank means, or averaging twice, trains differently."""
    assert runs["torch"][control]["ranks_agree"]  # DDP kept the replicas in sync: the math differs
    with pytest.raises(AssertionError):
        assert_same_training(runs["torch"][control], runs["torch"]["reference"])
    control_loss, reference_loss = (np.array(runs["torch"][k]["epoch_loss"]) for k in (control, "reference"))
    assert np.max(np.abs(control_loss - reference_loss) / reference_loss) > 10 * HISTORY.rtol  # by far, not by rounding
