"""Training precisions on each backend alone (``ml_patterns.precision``): a bad precision is a
clear error, pure bf16 is refused with the reason, "tf32" on a CPU computes exactly what "float32"
does, checkpoints hold float32 weights whatever the precision, and a bf16-mixed run resumes
bit-exact and resumes across precisions. Parity between the backends: parity_tests/test_precision.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import jax_impl.data
import jax_impl.molecules.models
import jax_impl.training
import torch_impl.data
import torch_impl.molecules.models
import torch_impl.training
from ml_patterns import checkpoint
from ml_patterns.data import LazyDataset, Subset
from ml_patterns.errors import UsageError
from ml_patterns.molecules.batches import BatchPreparer
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.optim import OptimizerConfig

IMPLS = {"torch": torch_impl, "jax": jax_impl}
OPTIMIZER = OptimizerConfig("adamw", learning_rate=2e-3, weight_decay=0.01)
COLLATE = dict(buckets=(64,), max_length=64)


@pytest.fixture(scope="module")
def data(default_dataset):
    root, manifest = default_dataset
    config = ModelConfig.from_manifest(manifest, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=64, seed=1)
    return (
        config,
        Subset(LazyDataset(root, split="train"), range(64)),
        Subset(LazyDataset(root, split="val"), range(16)),
    )


def make_trainer(impl, config, precision):
    torch.manual_seed(0)  # torch's dropout draws from the global generator
    model = impl.molecules.models.build_model(config)
    return impl.training.Trainer(model, OPTIMIZER, batch_transform=BatchPreparer(config), precision=precision)


def loaders(impl, train, val):
    return impl.data.make_loader(train, 16, seed=3, **COLLATE), impl.data.make_loader(val, 16, shuffle=False, **COLLATE)


@pytest.mark.parametrize("backend", IMPLS)
def test_a_bad_precision_is_a_clear_error(backend, data):
    impl, (config, _, _) = IMPLS[backend], data
    with pytest.raises(UsageError, match=r"unknown precision 'fp16': use one of float32, tf32, bf16-mixed"):
        make_trainer(impl, config, "fp16")
    with pytest.raises(UsageError, match=r"'bf16' .* is not offered: .* use 'bf16-mixed'"):
        make_trainer(impl, config, "bf16")


@pytest.mark.parametrize("backend", IMPLS)
def test_tf32_on_a_cpu_is_float32(backend, data):
    impl, (config, train, val) = IMPLS[backend], data
    # The precision is under test, not dropout (whose random bits double JAX's compile on a CPU).
    config = dataclasses.replace(config, dropout=0.0, attention_dropout=0.0)
    histories = [
        make_trainer(impl, config, precision).fit(*loaders(impl, train, val), num_epochs=1).as_dict()
        for precision in ("float32", "tf32")
    ]
    assert histories[0] == histories[1]


@pytest.mark.parametrize("backend", IMPLS)
def test_bf16_mixed_resumes_bit_exact_with_float32_checkpoints(backend, data, tmp_path):
    impl, (config, train, val) = IMPLS[backend], data
    reference = make_trainer(impl, config, "bf16-mixed").fit(*loaders(impl, train, val), num_epochs=3).as_dict()
    float32 = make_trainer(impl, config, "float32").fit(*loaders(impl, train, val), num_epochs=3).as_dict()
    # Not vacuous: bf16 really computed something else than float32.
    assert reference["train_loss"] != float32["train_loss"]

    first = make_trainer(impl, config, "bf16-mixed")
    first.fit(*loaders(impl, train, val), num_epochs=1)
    first.save_checkpoint(tmp_path / "cut")
    arrays, _ = checkpoint.load_checkpoint(tmp_path / "cut" / "model.safetensors")
    assert arrays and all(array.dtype == np.float32 for array in arrays.values())
    resumed = make_trainer(impl, config, "bf16-mixed")
    torch.manual_seed(12345)  # the checkpoint's generator state wins
    resumed.load_checkpoint(tmp_path / "cut")
    assert resumed.fit(*loaders(impl, train, val), num_epochs=3).as_dict() == reference


@pytest.mark.parametrize("backend", IMPLS)
def test_a_checkpoint_resumes_under_another_precision(backend, data, tmp_path):
    """float32 for an epoch, then bf16-mixed from its checkpoint: the same float32 weights go in,
    and training goes on, close to the float32 run's (bfloat16's resolution, 2^-8)."""
    impl, (config, train, val) = IMPLS[backend], data
    float32 = make_trainer(impl, config, "float32")
    kept = loaders(impl, train, val)  # the same loaders go on: their samplers count the epochs
    float32.fit(*kept, num_epochs=1)
    float32.save_checkpoint(tmp_path / "float32")
    continued = float32.fit(*kept, num_epochs=2).as_dict()

    mixed = make_trainer(impl, config, "bf16-mixed")
    mixed.load_checkpoint(tmp_path / "float32")
    assert mixed.epoch == 1
    mixed.save_checkpoint(tmp_path / "mixed")  # what it loaded, written back: the same float32 weights
    saved = [checkpoint.load_checkpoint(tmp_path / name / "model.safetensors")[0] for name in ("float32", "mixed")]
    assert all(saved[0][k].tobytes() == saved[1][k].tobytes() for k in saved[0])
    optimizer_states = [(tmp_path / name / "optimizer.safetensors").read_bytes() for name in ("float32", "mixed")]
    assert optimizer_states[0] == optimizer_states[1]  # and the same float32 optimizer state
    history = mixed.fit(*loaders(impl, train, val), num_epochs=2).as_dict()
    assert history["train_loss"][0] == continued["train_loss"][0]  # the epoch trained before the checkpoint
    assert history["train_loss"][1] != continued["train_loss"][1]  # the second epoch ran in bf16
    # How far an epoch of bf16 steps moves a run from its float32 twin depends on the batches and the
    # learning rate, so it is measured here: a first epoch from the same initial weights in each
    # precision. A resumed epoch much further off would mean that something other than rounding
    # changed at the resume (a state restored wrongly), not bf16.
    fresh = make_trainer(impl, config, "bf16-mixed").fit(*loaders(impl, train, val), num_epochs=1).as_dict()
    fresh_gap = abs(fresh["train_loss"][0] - continued["train_loss"][0]) / continued["train_loss"][0]
    resumed_gap = abs(history["train_loss"][1] - continued["train_loss"][1]) / continued["train_loss"][1]
    assert resumed_gap <= 4 * fresh_gap + 2.0**-8, (resumed_gap, fresh_gap)
