"""Data parallelism: N ranks or devices train as one device does, on both backends, and alike.

The runs (``parity_tests.distributed_runs``): each backend's ``Trainer`` on a masked-token model whose
ranks hold unequal numbers of real tokens, epochs whose last batch does not divide by N, 30 SGD steps
with momentum; torch DDP over 2 gloo processes and JAX over 2 and 4 simulated CPU devices, each
against its own one-device run (the plain mean loss over the global batch) and against each other.
Every step's loss, every epoch's train and val loss and the final weights agree within the
training-history tolerance of PARITY.md (measured: <= 3e-7 relative). A checkpoint written at N=2
(torch) or N=4 (JAX) after 3 epochs resumes at N=1 on the same backend and on the other one, and
finishes the one-device run. The molecule multi-task model (regression heads and masked tokens,
AdamW, the batch transform) trains alike at N=2 (torch) and N=4 (JAX). Two negative controls,
written as a naive user would over plain DDP, must fail the same check: the mean of per-rank token
means, and the global count with DDP's averaging on top. JAX's ``pad_batches_to`` (short batches
padded to the batch size with weight-0 rows) trains as the unpadded batches, on one device and two.

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

import torch_impl.molecules.models
from ml_patterns.distributed import shard
from parity_tests import distributed_runs
from parity_tests.tolerances import HISTORY

# Two subprocesses training every run above: the slowest fixture of the suite, run once (one worker).
pytestmark = pytest.mark.slow

TIMEOUT_S = 300
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory, default_dataset) -> dict:
    out = tmp_path_factory.mktemp("distributed")
    data, _ = default_dataset
    # The molecule model's initial weights, written once: both backends' runs start from them.
    torch_impl.molecules.models.build_model(distributed_runs.molecule_config(data)).save(
        out / distributed_runs.INITIAL_WEIGHTS
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = {
        backend: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "parity_tests.distributed_runs",
                backend,
                str(out / f"{backend}.json"),
                str(out),
                str(data),
            ],
            cwd=ROOT,
            env={**env, "JAX_NUM_CPU_DEVICES": "4"} if backend == "jax" else env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for backend in ("torch", "jax")
    }
    results = {"checkpoints": out}
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


def assert_same_training(actual: dict, expected: dict, *, params: bool = True) -> None:
    """Every value of ``actual`` against ``expected``'s; a resumed run's steps are the last ones."""
    for key in ("step_loss", "train_loss", "val_loss"):
        if key in actual:
            np.testing.assert_allclose(
                actual[key], expected[key][-len(actual[key]) :], rtol=HISTORY.rtol, atol=HISTORY.atol, err_msg=key
            )
    for name, value in expected["params"].items() if params else ():
        np.testing.assert_allclose(actual["params"][name], value, rtol=HISTORY.rtol, atol=HISTORY.atol, err_msg=name)


def test_ranks_hold_unequal_real_tokens_and_an_uneven_last_batch():
    """The premise of the runs: without it, a mean of per-rank means would be right by accident."""
    data, _ = distributed_runs.problem()
    world = distributed_runs.TORCH_WORLD
    unequal = uneven = 0
    for _, indices in distributed_runs.global_batches():
        uneven += len(indices) % world != 0
        parts = [shard(indices, world, rank) for rank in range(world)]
        tokens = [float(data["mask"][part.indices].sum(axis=1) @ part.weight) for part in parts]
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


@pytest.mark.parametrize(
    ("run", "reference"),
    [
        (("torch", "molecule-ddp"), ("torch", "molecule")),
        (("jax", "molecule-sharded"), ("jax", "molecule")),
        (("jax", "molecule-sharded"), ("torch", "molecule-ddp")),
    ],
    ids=["torch-2-vs-1", "jax-4-vs-1", "jax-4-vs-torch-2"],
)
def test_the_molecule_model_trains_data_parallel_as_on_one_device(runs, run, reference):
    """Regression heads (per-molecule means) and masked tokens (token means) in one loss, AdamW;
    losses only: Adam moves a weight whose gradient is ~1e-9 by +-lr whatever its sign, so
    rounding-level differences can flip single weights without changing the losses
    (parity_tests/test_training.py)."""
    assert_same_training(runs[run[0]][run[1]], runs[reference[0]][reference[1]], params=False)


@pytest.mark.parametrize("world_size", [2, 3])
def test_padded_batches_train_as_the_batches_themselves(runs, world_size):
    """``pad_batches_to``: the short last batches padded to the batch size with weight-0 rows train
    as unpadded (JAX one device, torch) and compile no program of their own. The token model over 2
    or 3 devices (3 rows each: 9 for a batch of 8): 1 gradients program, the update, 1 eval program,
    where unpadded the 5-sample train batch and the 5-sample val batch each add one. The molecule
    model: 37 training molecules in batches of 16 (a last one of 5) and 11 validation ones, one
    padded length: 3 programs, 4 unpadded."""
    padded = runs["jax"][f"padded-sharded-{world_size}"]
    assert_same_training(padded, runs["jax"]["reference"])
    assert_same_training(padded, runs["torch"]["reference"])
    assert padded["compilations"] == 3
    molecule = runs["jax"]["molecule-padded"]
    for reference in (runs["jax"]["molecule"], runs["torch"]["molecule"]):
        assert_same_training(molecule, reference, params=False)
    assert (molecule["compilations"], runs["jax"]["molecule"]["compilations"]) == (3, 4)


def test_only_rank_0_writes_checkpoints(runs):
    assert (runs["checkpoints"] / "rank-0").is_dir() and not (runs["checkpoints"] / "rank-1").exists()


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_data_parallel_checkpoint_resumes_on_one_device(runs, backend):
    assert_same_training(runs[backend]["resumed"], runs[backend]["reference"])


@pytest.mark.parametrize(("writer", "reader"), [("torch-ddp", "jax"), ("jax-sharded", "torch")])
def test_a_data_parallel_checkpoint_resumes_on_the_other_backend(runs, writer, reader):
    resume = distributed_runs.jax_resumed if reader == "jax" else distributed_runs.torch_resumed
    assert_same_training(resume(runs["checkpoints"] / writer), runs[reader]["reference"])


@pytest.mark.parametrize("control", ["naive", "double"])
def test_naive_reductions_fail_the_same_check(runs, control):
    """The check can fail: a mean of per-rank means, or averaging twice, trains differently."""
    assert runs["torch"][control]["ranks_agree"]  # DDP kept the replicas in sync: the math differs
    with pytest.raises(AssertionError):
        assert_same_training(runs["torch"][control], runs["torch"]["reference"])
    control_loss, reference_loss = (np.array(runs["torch"][k]["step_loss"]) for k in (control, "reference"))
    assert np.max(np.abs(control_loss - reference_loss) / reference_loss) > 10 * HISTORY.rtol  # by far
