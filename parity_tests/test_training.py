"""The same training run in both backends: same weights, same batches, same history.

Real data (the default dataset), the multi-task model and the autoencoder, each optimizer of
``ml_patterns.optim``: at least 3 epochs and 100 optimizer steps per run, every epoch's train and
val loss within the training-history tolerance of PARITY.md. Dropout is 0: torch's and JAX's
dropout masks come from different generators and cannot match (PARITY.md); the model parity suite
tests dropout separately.
"""

from __future__ import annotations

import numpy as np
import pytest

import jax_impl.data
import jax_impl.models
import jax_impl.molecules.models
import jax_impl.state
import jax_impl.training
import torch_impl.data
import torch_impl.models
import torch_impl.molecules.models
import torch_impl.state
import torch_impl.training
from ml_patterns.callbacks import EarlyStopping
from ml_patterns.data import LazyDataset, Subset
from ml_patterns.molecules.batches import BatchPreparer
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.optim import OptimizerConfig, ScheduleConfig
from parity_tests.tolerances import HISTORY

# 20 steps an epoch, 100 in all (what the history tolerance presupposes), in batches of 8: the
# step count, not the batch size, is what lets a porting difference build up.
TRAIN_MOLECULES, BATCH, EPOCHS = 160, 8, 5
COLLATE = dict(buckets=(64,), max_length=64)  # one padded shape: one compilation
SCHEDULE = ScheduleConfig(warmup_steps=10, total_steps=100, final_fraction=0.1)

RUNS = {
    "multitask-sgd": ("multitask", OptimizerConfig("sgd", learning_rate=0.01, momentum=0.9)),
    "multitask-adam": ("multitask", OptimizerConfig("adam", learning_rate=1e-3)),
    "multitask-adam_l2-clip": (
        "multitask",
        OptimizerConfig("adam_l2", learning_rate=1e-3, weight_decay=1e-2, clip_grad_norm=1.0),
    ),
    "multitask-adamw-clip-schedule": (
        "multitask",
        OptimizerConfig("adamw", learning_rate=2e-3, weight_decay=0.05, clip_grad_norm=1.0, schedule=SCHEDULE),
    ),
    "autoencoder-adamw-schedule": (
        "autoencoder",
        OptimizerConfig("adamw", learning_rate=2e-3, weight_decay=0.01, schedule=SCHEDULE),
    ),
}


@pytest.fixture(scope="module")
def data(default_dataset):
    root, manifest = default_dataset
    train = Subset(LazyDataset(root, split="train"), range(TRAIN_MOLECULES))
    val = Subset(LazyDataset(root, split="val"), range(64))
    return manifest, train, val


def small_config(manifest, architecture: str) -> ModelConfig:
    # One encoder layer: stacking layers is compared in parity_tests/test_models.py (two layers).
    return ModelConfig.from_manifest(
        manifest,
        architecture=architecture,
        d_model=32,
        n_heads=2,
        n_layers=1,
        n_decoder_layers=1,
        d_ff=64,
        max_len=64,
        dropout=0.0,
        attention_dropout=0.0,
        seed=3,
    )


def run_both(config, optimizer, train, val, callbacks=lambda: (), batch=BATCH, accumulate_steps=1):
    torch_model = torch_impl.molecules.models.build_model(config)
    jax_model = jax_impl.molecules.models.build_model(config)
    jax_impl.state.from_numpy(jax_model, torch_impl.state.to_numpy(torch_model))
    histories = {}
    for name, impl, model in (("torch", torch_impl, torch_model), ("jax", jax_impl, jax_model)):
        trainer = impl.training.Trainer(
            model, optimizer, callbacks(), batch_transform=BatchPreparer(config), accumulate_steps=accumulate_steps
        )
        histories[name] = trainer.fit(
            impl.data.make_loader(train, batch, seed=7, **COLLATE),
            impl.data.make_loader(val, 32, shuffle=False, **COLLATE),
            EPOCHS,
        )
    return histories, torch_model, jax_model


@pytest.mark.slow
@pytest.mark.standard_promotion("optax's Adam and schedules mix the int32 step count with Python floats")
@pytest.mark.parametrize("run", sorted(RUNS))
def test_training_histories_agree(data, run):
    manifest, train, val = data
    architecture, optimizer = RUNS[run]
    config = small_config(manifest, architecture)
    initial = torch_impl.state.to_numpy(torch_impl.molecules.models.build_model(config))
    histories, torch_model, jax_model = run_both(config, optimizer, train, val)
    torch_history, jax_history = histories["torch"], histories["jax"]
    assert len(torch_history) == len(jax_history) == EPOCHS
    assert torch_history["train_loss"][-1] < 0.9 * torch_history["train_loss"][0], "the model must actually learn"
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(
            jax_history[key], torch_history[key], rtol=HISTORY.rtol, atol=HISTORY.atol, err_msg=key
        )
    # The trainers wrote the trained weights back into the model objects, and the two agree far
    # better than either agrees with the initial weights. (Elementwise they can differ by a few
    # learning rates: Adam moves a parameter whose gradient is ~1e-9 by +-lr whatever its sign,
    # so rounding-level gradient differences flip such updates; the losses above are unaffected.)
    trained = {"torch": torch_impl.state.to_numpy(torch_model), "jax": jax_impl.state.to_numpy(jax_model)}
    travelled = _global_norm({k: trained["torch"][k] - initial[k] for k in initial})
    apart = _global_norm({k: trained["torch"][k] - trained["jax"][k] for k in initial})
    assert apart < 0.05 * travelled, f"weights {apart:.3g} apart after travelling {travelled:.3g}"


def _global_norm(arrays: dict) -> float:
    return float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in arrays.values())))


@pytest.mark.slow
@pytest.mark.standard_promotion("optax's Adam mixes the int32 step count with Python floats")
def test_early_stopping_stops_both_at_the_same_epoch(data):
    manifest, train, val = data
    optimizer = OptimizerConfig("adam", learning_rate=1e-2)
    histories, _, _ = run_both(
        small_config(manifest, "multitask"),
        optimizer,
        train,
        val,
        callbacks=lambda: [EarlyStopping(monitor="val_loss", patience=1, min_delta=0.2)],
    )
    # Both stop at the first epoch that improves on the best by less than min_delta (patience 1), and
    # that epoch comes before the last: the rule decided, not the epoch count.
    val_loss = histories["torch"]["val_loss"]
    stop = next(e for e in range(1, len(val_loss)) if not val_loss[e] < min(val_loss[:e]) - 0.2)
    assert len(histories["torch"]) == len(histories["jax"]) == stop + 1 < EPOCHS
    np.testing.assert_allclose(
        histories["jax"]["val_loss"], histories["torch"]["val_loss"], rtol=HISTORY.rtol, atol=HISTORY.atol
    )


@pytest.mark.slow
@pytest.mark.standard_promotion("optax's Adam and schedules mix the int32 step count with Python floats")
def test_training_histories_agree_with_gradient_accumulation(data):
    # Micro-batches of 4, two per update: the 100 updates of the other runs, clipped and scheduled
    # once per update, from gradients summed over two micro-batches on each side.
    manifest, train, val = data
    config = small_config(manifest, "multitask")
    histories, _, _ = run_both(
        config, RUNS["multitask-adamw-clip-schedule"][1], train, val, batch=BATCH // 2, accumulate_steps=2
    )
    assert histories["torch"]["train_loss"][-1] < 0.9 * histories["torch"]["train_loss"][0]
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(
            histories["jax"][key], histories["torch"][key], rtol=HISTORY.rtol, atol=HISTORY.atol, err_msg=key
        )
