"""Gradient accumulation (``accumulate_steps``): k micro-batches make one update equal to that of
one batch holding their samples, each sample weighing the same, on both backends and across them."""

from __future__ import annotations

import numpy as np
import optax
import pytest
import torch

import jax_impl.state
import torch_impl.state
from ml_patterns.callbacks import Callback
from ml_patterns.optim import OptimizerConfig
from ml_patterns.parity import compare
from parity_tests.tolerances import HISTORY
from tests.test_training import IMPLS, regressor

# Clipping tight enough to act: it must see the group's gradient, once per update.
OPTIMIZER = OptimizerConfig("adamw", learning_rate=0.02, weight_decay=0.01, clip_grad_norm=0.1)
# Batches of 8: 8,8,8,8,8,4; of 16: 16,16,12. The last group's micro-batches are 8 and 4 samples:
# the mean of their two means (optax.MultiSteps' rule) would weigh the 4 as 8, and fail these tests.
ROWS, EPOCHS = 44, 3


def table():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 4)).astype(np.float32)
    return {"x": x, "y": np.sin(x.sum(axis=1)).astype(np.float32)}


class Updates(Callback):
    """Every on_batch_end: (batch index, samples, loss)."""

    def __init__(self):
        self.seen = []

    def on_batch_end(self, batch_idx, trainer, loss):
        self.seen.append((batch_idx, trainer.last_batch_size, float(loss)))


def weights(backend, trainer):
    if backend == "torch":
        return torch_impl.state.to_numpy(trainer.model)
    trainer.sync_model()
    return jax_impl.state.to_numpy(trainer.model)


def run(backend, batch_size, accumulate_steps, optimizer=OPTIMIZER, model=None):
    impl, updates = IMPLS[backend], Updates()
    model = regressor(backend) if model is None else model
    if optimizer == "framework":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if backend == "torch" else None
        optimizer = optimizer or optax.sgd(0.1, momentum=0.9)
    trainer = impl.training.Trainer(model, optimizer, [updates], accumulate_steps=accumulate_steps)
    loader = impl.data.make_loader(table(), batch_size, seed=5)
    val = impl.data.make_loader(table(), 16, shuffle=False)
    history = trainer.fit(loader, val, num_epochs=EPOCHS)
    return trainer, history.as_dict(), updates.seen


def check(expected, actual):
    report = compare(expected, actual, HISTORY, names=("one batch", "accumulated"))
    assert report.passed, report.format_table(failures_only=True)


@pytest.mark.parametrize("optimizer", [OPTIMIZER, "framework"], ids=["config-clipped", "framework"])
@pytest.mark.parametrize("backend", IMPLS)
def test_two_batches_of_8_update_as_one_batch_of_16(backend, optimizer):
    big, big_history, big_updates = run(backend, 16, 1, optimizer)
    small, small_history, small_updates = run(backend, 8, 2, optimizer)
    assert small.optimizer_step == big.optimizer_step == 3 * EPOCHS
    assert small.batches_per_epoch == 3
    # The callbacks see one event per update: the group's index, samples and per-sample mean loss.
    assert (
        [(i, n) for i, n, _ in small_updates] == [(i, n) for i, n, _ in big_updates] == [(0, 16), (1, 16), (2, 12)] * 3
    )
    check(
        {"history": big_history, "weights": weights(backend, big)},
        {
            "history": small_history,
            "weights": weights(backend, small),
        },
    )
    check({"loss": np.array([x for *_, x in big_updates])}, {"loss": np.array([x for *_, x in small_updates])})


def test_torch_and_jax_agree_with_accumulation():
    torch_model, jax_model = regressor("torch"), regressor("jax")
    jax_impl.state.from_numpy(jax_model, torch_impl.state.to_numpy(torch_model))
    torch_run, torch_history, _ = run("torch", 8, 3, model=torch_model)
    jax_run, jax_history, _ = run("jax", 8, 3, model=jax_model)
    assert torch_run.optimizer_step == jax_run.optimizer_step == 2 * EPOCHS  # 6 batches: groups of 3
    report = compare(
        {"history": torch_history, "weights": weights("torch", torch_run)},
        {"history": jax_history, "weights": weights("jax", jax_run)},
        HISTORY,
        names=("torch", "jax"),
    )
    assert report.passed, report.format_table(failures_only=True)


@pytest.mark.parametrize("backend", IMPLS)
def test_accumulate_steps_is_checked(backend):
    impl, model = IMPLS[backend], regressor(backend)
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match=r"accumulate_steps must be a positive int .*got"):
            impl.training.Trainer(model, OPTIMIZER, accumulate_steps=bad)


@pytest.mark.parametrize("backend", IMPLS)
def test_train_takes_accumulate_steps(backend):
    impl = IMPLS[backend]
    history = impl.training.train(
        regressor(backend), impl.data.make_loader(table(), 8, seed=5), None, OPTIMIZER, 2, accumulate_steps=2
    )
    reference = impl.training.train(regressor(backend), impl.data.make_loader(table(), 16, seed=5), None, OPTIMIZER, 2)
    check(reference, history)


def test_jax_compiles_one_accumulation_program_per_group_signature():
    from jax_impl.training import accumulated_gradients

    trainer, _, _ = run("jax", 8, 2)
    program = accumulated_gradients(trainer.train_step.gradients, 2)
    # Groups of 8 + 8 and the last one of 8 + 4 samples: two signatures; the update compiles once.
    assert program._cache_size() == 2 and trainer.train_step.update._cache_size() == 1
    # Evaluation: batches of 16 and of 12 rows.
    assert trainer.compilations() == trainer.train_step.compilations() + 2 + 2


@pytest.mark.parametrize("backend", IMPLS)
def test_resume_with_accumulation_is_bit_exact(backend, tmp_path):
    impl = IMPLS[backend]
    whole, reference, _ = run(backend, 8, 2)
    first = impl.training.Trainer(regressor(backend), OPTIMIZER, accumulate_steps=2)
    val = impl.data.make_loader(table(), 16, shuffle=False)
    first.fit(impl.data.make_loader(table(), 8, seed=5), val, num_epochs=1)
    first.save_checkpoint(tmp_path / "ckpt")
    resumed = impl.training.Trainer(regressor(backend), OPTIMIZER, accumulate_steps=2)
    resumed.load_checkpoint(tmp_path / "ckpt")
    history = resumed.fit(impl.data.make_loader(table(), 8, seed=5), val, num_epochs=EPOCHS)
    assert history.as_dict() == reference
    assert resumed.optimizer_step == whole.optimizer_step == 3 * EPOCHS
