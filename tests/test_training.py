"""Trainer of each backend alone: generic models and framework optimizers, the molecule workload's
batch transform, callbacks, checkpoints, resume (bit-exact), a kill mid-save, the non-finite stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from abc import ABC
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jax_impl.data
import jax_impl.models
import jax_impl.molecules.models
import jax_impl.training
import torch_impl.data
import torch_impl.models
import torch_impl.molecules.models
import torch_impl.training
from ml_patterns.callbacks import Callback, EarlyStopping, HistoryLogger, ModelCheckpoint, ProgressBar, StopReason
from ml_patterns.data import LazyDataset, Subset
from ml_patterns.molecules.batches import BatchPreparer
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.optim import OptimizerConfig
from ml_patterns.training_checkpoint import load_training_checkpoint

IMPLS = {"torch": torch_impl, "jax": jax_impl}
OPTIMIZER = OptimizerConfig("adamw", learning_rate=2e-3, weight_decay=0.01)
COLLATE = dict(buckets=(64,), max_length=64)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(default_dataset):
    root, manifest = default_dataset
    return (
        manifest,
        Subset(LazyDataset(root, split="train"), range(96)),
        Subset(LazyDataset(root, split="val"), range(32)),
    )


def config_for(manifest, dropout=0.1):
    return ModelConfig.from_manifest(
        manifest,
        d_model=16,
        n_heads=2,
        n_layers=1,
        d_ff=32,
        max_len=64,
        dropout=dropout,
        attention_dropout=dropout,
        seed=1,
    )


def make_trainer(impl, manifest, callbacks=(), dropout=0.1, optimizer=OPTIMIZER):
    torch.manual_seed(0)  # torch's dropout draws from the global generator
    config = config_for(manifest, dropout)
    return impl.training.Trainer(
        impl.molecules.models.build_model(config), optimizer, list(callbacks), batch_transform=BatchPreparer(config)
    )


def loaders(impl, train, val):
    return impl.data.make_loader(train, 16, seed=3, **COLLATE), impl.data.make_loader(val, 16, shuffle=False, **COLLATE)


@pytest.mark.parametrize("backend", IMPLS)
def test_train_returns_per_epoch_history(backend, data):
    impl = IMPLS[backend]
    manifest, train, val = data
    config = config_for(manifest)
    model = impl.molecules.models.build_model(config)
    history = impl.training.train(
        model, *loaders(impl, train, val), OPTIMIZER, 3, batch_transform=BatchPreparer(config)
    )
    assert list(history) == ["train_loss", "val_loss"]
    assert len(history["train_loss"]) == len(history["val_loss"]) == 3
    assert all(np.isfinite(history["train_loss"])) and history["train_loss"][2] < history["train_loss"][0]


@pytest.mark.parametrize("backend", IMPLS)
def test_resume_from_any_epoch_is_bit_exact(backend, data, tmp_path):
    impl = IMPLS[backend]
    manifest, train, val = data
    reference = make_trainer(impl, manifest).fit(*loaders(impl, train, val), num_epochs=4).as_dict()

    for cut in (1, 3):
        first = make_trainer(impl, manifest)
        first.fit(*loaders(impl, train, val), num_epochs=cut)
        first.save_checkpoint(tmp_path / f"cut{cut}")
        resumed = make_trainer(impl, manifest)
        torch.manual_seed(12345)  # whatever the generator holds now, the checkpoint's state wins
        resumed.load_checkpoint(tmp_path / f"cut{cut}")
        history = resumed.fit(*loaders(impl, train, val), num_epochs=4).as_dict()
        assert history == reference, f"resumed after epoch {cut}"


@pytest.mark.parametrize(("writer", "reader"), [("torch", "jax"), ("jax", "torch")])
def test_checkpoint_resumes_in_the_other_backend(writer, reader, data, tmp_path):
    from parity_tests.tolerances import HISTORY

    manifest, train, val = data
    reference = make_trainer(IMPLS[writer], manifest, dropout=0.0).fit(
        *loaders(IMPLS[writer], train, val), num_epochs=4
    )
    first = make_trainer(IMPLS[writer], manifest, dropout=0.0)
    first.fit(*loaders(IMPLS[writer], train, val), num_epochs=2)
    first.save_checkpoint(tmp_path / "ckpt")
    resumed = make_trainer(IMPLS[reader], manifest, dropout=0.0)
    resumed.load_checkpoint(tmp_path / "ckpt")
    history = resumed.fit(*loaders(IMPLS[reader], train, val), num_epochs=4)
    assert history["epoch"] == [0, 1, 2, 3]
    assert history["train_loss"][:2] == reference["train_loss"][:2]  # carried over from the checkpoint
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(history[key], reference[key], rtol=HISTORY.rtol, atol=HISTORY.atol, err_msg=key)


@pytest.mark.parametrize("backend", IMPLS)
def test_callbacks_drive_the_trainer(backend, data, tmp_path):
    impl = IMPLS[backend]
    manifest, train, val = data
    checkpoints = ModelCheckpoint(tmp_path / "ckpts", False, filename="epoch{epoch}", save_top_k=2, save_last=True)
    stopper = EarlyStopping(1, 10.0)  # epoch 0 improves on +inf, epoch 1 not by 10: stops after epoch 1
    trainer = make_trainer(impl, manifest, [checkpoints, stopper, HistoryLogger(tmp_path / "history")])
    history = trainer.fit(*loaders(impl, train, val), num_epochs=5)
    assert len(history) == 2 and trainer.should_stop
    assert stopper.stop_reason is StopReason.PATIENCE_EXHAUSTED and "EarlyStopping at epoch 1" in trainer.stop_reason
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["epoch0", "epoch1", "last"]
    _, _, saved = load_training_checkpoint(tmp_path / "ckpts" / "last")
    assert saved["epoch"] == 2 and saved["optimizer"]["step"] == 12 and saved["history"] == history.as_dict()
    assert json.loads((tmp_path / "history.json").read_text()) == history.as_dict()


@pytest.mark.parametrize("backend", IMPLS)
def test_load_refuses_another_optimizer(backend, data, tmp_path):
    impl = IMPLS[backend]
    manifest, train, val = data
    trainer = make_trainer(impl, manifest)
    trainer.save_checkpoint(tmp_path / "ckpt")
    other = make_trainer(impl, manifest, optimizer=OptimizerConfig("sgd", learning_rate=0.1))
    with pytest.raises(ValueError, match="optimizer 'adamw'"):
        other.load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match=r"training checkpoint .*missing does not exist"):
        other.load_checkpoint(tmp_path / "missing")


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)  # as the parent (conftest.py): the same arithmetic, bit for bit
    import ml_patterns.training_checkpoint as training
    from tests.test_training import IMPLS, ModelCheckpoint, loaders, make_trainer, run_data

    backend, out = sys.argv[1], sys.argv[2]
    manifest, train, val = run_data()
    saves = 0
    write_text = training.atomic_write_text

    def dying_write_text(path, text):
        # The third checkpoint (after epoch 2): the model and optimizer files are written, the
        # state file is not, when the process is killed.
        global saves
        if path.name == training.STATE_FILE:
            saves += 1
            if saves == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        write_text(path, text)

    training.atomic_write_text = dying_write_text
    impl = IMPLS[backend]
    trainer = make_trainer(impl, manifest, [ModelCheckpoint(out, save_top_k=0, save_last=True)])
    trainer.fit(*loaders(impl, train, val), num_epochs=4)
""")


def run_data():
    from ml_patterns.molecules.prepare import prepare_dataset

    root = Path(os.environ["ML_PATTERNS_TEST_DATA"])
    manifest = (
        json.loads((root / "manifest.json").read_text()) if root.exists() else prepare_dataset(root, progress=False)
    )
    return (
        manifest,
        Subset(LazyDataset(root, split="train"), range(96)),
        Subset(LazyDataset(root, split="val"), range(32)),
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", IMPLS)
def test_a_run_killed_during_a_checkpoint_save_loses_nothing(backend, data, default_dataset, tmp_path):
    impl = IMPLS[backend]
    manifest, train, val = data
    out = tmp_path / "ckpts"
    env = {**os.environ, "ML_PATTERNS_TEST_DATA": str(default_dataset[0]), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, backend, str(out)], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == -9, result.stderr[-3000:]

    # The last complete checkpoint (after epoch 1) is intact; the interrupted one left only a
    # hidden staging directory, which no reader takes for a checkpoint.
    _, _, saved = load_training_checkpoint(out / "last")
    assert saved["epoch"] == 2
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == ["last"]

    resumed = make_trainer(impl, manifest, [ModelCheckpoint(out, save_top_k=0, save_last=True)])
    resumed.load_checkpoint(out / "last")
    history = resumed.fit(*loaders(impl, train, val), num_epochs=4)
    reference = make_trainer(impl, manifest).fit(*loaders(impl, train, val), num_epochs=4)
    assert history.as_dict() == reference.as_dict()


def test_jax_trainer_compiles_its_step_once_per_shape(data):
    manifest, train, val = data
    # An optimizer no other test uses: the compiled steps are shared by trainers alike.
    trainer = make_trainer(
        jax_impl, manifest, optimizer=OptimizerConfig("adamw", learning_rate=3e-3, weight_decay=0.02)
    )
    trainer.fit(*loaders(jax_impl, train, val), num_epochs=2)  # one padded shape (COLLATE)
    # The gradients once for that shape, the optimizer update once whatever the shape.
    assert trainer.train_step.gradients._cache_size() == 1 and trainer.train_step.update._cache_size() == 1
    assert trainer.eval_step._cache_size() == 1
    assert trainer.compilations() == 3


# -- generic models, framework optimizers --------------------------------------------------------
class TorchRegressor(torch.nn.Module):
    """Any nn.Module with compute_loss: no BaseModel, no config."""

    def __init__(self):
        super().__init__()
        self.hidden, self.out = torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)

    def compute_loss(self, batch):
        return torch.mean((self.out(torch.tanh(self.hidden(batch["x"])))[:, 0] - batch["y"]) ** 2)


class JaxRegressor(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.hidden, self.out = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 1, rngs=rngs)

    def compute_loss(self, batch):
        return jnp.mean((self.out(jnp.tanh(self.hidden(batch["x"])))[:, 0] - batch["y"]) ** 2)


def regressor(backend):
    torch.manual_seed(0)
    return TorchRegressor() if backend == "torch" else JaxRegressor()


def framework_optimizer(backend, model, lr=0.05):
    if backend == "torch":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    return optax.adamw(lr, weight_decay=0.01)


def regression_batches(sizes=(16, 16, 8)):
    """Batches of ``{"x": float32 [n, 4], "y": float32 [n]}``, a short last one."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(sum(sizes), 4)).astype(np.float32)
    y = np.sin(x.sum(axis=1)).astype(np.float32)
    bounds = np.cumsum((0, *sizes))
    return [{"x": x[a:b], "y": y[a:b]} for a, b in zip(bounds[:-1], bounds[1:])]


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_start(self, trainer):
        self.events.append(("train_start",))

    def on_epoch_start(self, epoch, trainer):
        self.events.append(("epoch_start", epoch))

    def on_batch_end(self, batch_idx, trainer, loss):
        self.events.append(("batch_end", batch_idx, float(loss), trainer.last_batch_size))

    def on_epoch_end(self, epoch, trainer, metrics):
        self.events.append(("epoch_end", epoch, dict(metrics)))

    def on_train_end(self, trainer):
        self.events.append(("train_end",))


@pytest.mark.parametrize("backend", IMPLS)
def test_seed_train_with_a_framework_optimizer_and_seed_hooks(backend):
    impl, model = IMPLS[backend], regressor(backend)
    batches = regression_batches()
    history = impl.training.train(model, batches, batches, framework_optimizer(backend, model), 3)
    assert list(history) == ["train_loss", "val_loss"] and history["val_loss"][-1] < history["val_loss"][0]

    recorder, seen = Recorder(), []

    def transform(batch, epoch, batch_index, *, train):
        seen.append((epoch, batch_index, train))
        return batch

    model = regressor(backend)
    callbacks = [recorder, ProgressBar(refresh_s=0.0, disable=True)]  # the bar reads every batch's loss
    trainer = impl.training.Trainer(model, framework_optimizer(backend, model), callbacks, batch_transform=transform)
    trainer.fit(batches, batches, num_epochs=2)
    names = [event[0] for event in recorder.events]
    assert names == ["train_start", *(["epoch_start", *["batch_end"] * 3, "epoch_end"] * 2), "train_end"]
    assert seen == [(e if train else 0, i, train) for e in (0, 1) for train in (True, False) for i in range(3)]
    # The epoch's train loss is the per-sample mean of the losses on_batch_end received.
    batch_ends = [event for event in recorder.events if event[0] == "batch_end"][:3]
    assert [event[3] for event in batch_ends] == [16, 16, 8]
    weighted = sum(loss * n for _, _, loss, n in batch_ends) / 40
    assert recorder.events[5][2]["train_loss"] == pytest.approx(weighted, rel=1e-6)


@pytest.mark.parametrize("backend", IMPLS)
def test_samples_per_batch_default_and_hooks(backend):
    impl, model = IMPLS[backend], regressor(backend)
    trainer = impl.training.Trainer(model, framework_optimizer(backend, model))
    uneven, whole = trainer.evaluate(regression_batches()), trainer.evaluate(regression_batches((40,)))
    assert uneven == pytest.approx(whole, rel=1e-6)  # the leading dimension of the first array: per sample

    class CountsBatches(list):
        def batch_size(self, batch):
            return 1  # every batch weighs the same, whatever it holds

    per_batch = trainer.evaluate(CountsBatches(regression_batches()))
    means = [trainer.evaluate([batch]) for batch in regression_batches()]
    assert per_batch == pytest.approx(np.mean(means), rel=1e-6) and per_batch != pytest.approx(uneven, rel=1e-3)
    model.batch_size = lambda batch: 1  # the model's hook, asked when the loader has none
    assert trainer.evaluate(regression_batches()) == pytest.approx(per_batch, rel=1e-6)


@pytest.mark.parametrize("backend", IMPLS)
def test_framework_optimizer_resume_is_bit_exact(backend, tmp_path):
    impl, batches = IMPLS[backend], regression_batches()

    def trainer():
        model = regressor(backend)
        return impl.training.Trainer(model, framework_optimizer(backend, model))

    reference = trainer().fit(batches, batches, num_epochs=4).as_dict()
    first = trainer()
    first.fit(batches, batches, num_epochs=2)
    first.save_checkpoint(tmp_path / "ckpt")
    resumed = trainer()
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.optimizer_step == 6
    assert resumed.fit(batches, batches, num_epochs=4).as_dict() == reference


@pytest.mark.parametrize(("writer", "reader"), [("torch", "jax"), ("jax", "torch")])
def test_framework_optimizer_checkpoint_is_refused_by_the_other_backend(writer, reader, tmp_path):
    model = regressor(writer)
    IMPLS[writer].training.Trainer(model, framework_optimizer(writer, model)).save_checkpoint(tmp_path / "ckpt")
    model = regressor(reader)
    other = IMPLS[reader].training.Trainer(model, framework_optimizer(reader, model))
    with pytest.raises(ValueError, match=f"which only {writer} can read.*OptimizerConfig"):
        other.load_checkpoint(tmp_path / "ckpt")
    portable = IMPLS[writer].training.Trainer(regressor(writer), OPTIMIZER)
    with pytest.raises(ValueError, match="optimizer instance"):
        portable.load_checkpoint(tmp_path / "ckpt")


def test_torch_checkpoint_of_another_optimizer_class_is_refused(tmp_path):
    model = regressor("torch")
    torch_impl.training.Trainer(model, framework_optimizer("torch", model)).save_checkpoint(tmp_path / "ckpt")
    model = regressor("torch")
    sgd = torch_impl.training.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="torch.optim.AdamW, this trainer has a torch.optim.SGD"):
        sgd.load_checkpoint(tmp_path / "ckpt")


def test_optax_checkpoint_of_another_transformation_is_refused(tmp_path):
    model = regressor("jax")
    jax_impl.training.Trainer(model, optax.adamw(0.1, weight_decay=0.01)).save_checkpoint(tmp_path / "ckpt")
    other = jax_impl.training.Trainer(regressor("jax"), optax.sgd(0.1, momentum=0.9))
    with pytest.raises(ValueError, match="another optax transformation"):
        other.load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("backend", IMPLS)
def test_training_stops_after_the_first_non_finite_epoch(backend):
    impl, batches = IMPLS[backend], regression_batches()
    diverging = OptimizerConfig("sgd", learning_rate=1e30, momentum=0.0)
    trainer = impl.training.Trainer(regressor(backend), diverging)
    history = trainer.fit(batches, batches, num_epochs=6)
    finite = [bool(np.isfinite(t) and np.isfinite(v)) for t, v in zip(history["train_loss"], history["val_loss"])]
    assert finite[-1] is False and all(finite[:-1]) and len(history) < 6
    assert trainer.should_stop and f"stopped after epoch {len(history) - 1}" in trainer.stop_reason
    assert "is not finite" in trainer.stop_reason
    keeps_going = impl.training.Trainer(regressor(backend), diverging, stop_on_non_finite=False)
    assert len(keeps_going.fit(batches, batches, num_epochs=6)) == 6


@pytest.mark.parametrize("backend", IMPLS)
def test_unknown_optimizer_type_is_refused(backend):
    with pytest.raises(TypeError, match="optimizer must be"):
        IMPLS[backend].training.Trainer(regressor(backend), "adam")


def test_jax_trainer_carries_batch_statistics():
    """Non-parameter state a compute_loss updates (BatchNorm's running mean) flows through the
    jitted step and back into the model."""

    class Normalized(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.hidden, self.norm = nnx.Linear(4, 4, rngs=rngs), nnx.BatchNorm(4, rngs=rngs)
            self.out = nnx.Linear(4, 1, rngs=rngs)

        def compute_loss(self, batch):
            return jnp.mean((self.out(self.norm(self.hidden(batch["x"])))[:, 0] - batch["y"]) ** 2)

    model = Normalized()
    jax_impl.training.train(model, regression_batches(), None, optax.adam(1e-2), 2)
    assert np.abs(np.asarray(model.norm.mean[...])).max() > 1e-3  # starts at zeros


# -- the seed's callbacks, verbatim (their own base class: three hooks, no state_dict) -----------
class SeedCallback(ABC):  # noqa: B024 (the seed's: an ABC without abstract methods)
    def on_epoch_start(self, epoch: int, trainer) -> None:  # noqa: B027 (the seed's, verbatim)
        pass

    def on_epoch_end(self, epoch: int, trainer, metrics: dict) -> None:  # noqa: B027
        pass

    def on_batch_end(self, batch_idx: int, trainer, loss: float) -> None:  # noqa: B027
        pass


class SeedEarlyStopping(SeedCallback):
    def __init__(self, patience: int = 10, min_delta: float = 1e-4):
        self.patience = patience
        self.min_delta = min_delta
        self.best_loss = float("inf")
        self.counter = 0

    def on_epoch_end(self, epoch: int, trainer, metrics: dict) -> None:
        val_loss = metrics.get("val_loss", float("inf"))
        if val_loss < self.best_loss - self.min_delta:
            self.best_loss = val_loss
            self.counter = 0
        else:
            self.counter += 1
        if self.counter >= self.patience:
            trainer.should_stop = True
            print(f"Early stopping at epoch {epoch}")


class SeedModelCheckpoint(SeedCallback):
    def __init__(self, path: Path, save_best_only: bool = True):
        self.path = path
        self.save_best_only = save_best_only
        self.best_loss = float("inf")

    def on_epoch_end(self, epoch: int, trainer, metrics: dict) -> None:
        val_loss = metrics.get("val_loss", float("inf"))
        if not self.save_best_only or val_loss < self.best_loss:
            self.best_loss = val_loss
            trainer.save_checkpoint(self.path / f"epoch_{epoch}.pt")


@pytest.mark.parametrize("backend", IMPLS)
def test_the_seeds_own_callbacks_drive_the_trainer(backend, tmp_path, capsys):
    impl, batches, model = IMPLS[backend], regression_batches(), regressor(backend)
    callbacks = [SeedEarlyStopping(patience=1, min_delta=10.0), SeedModelCheckpoint(tmp_path)]
    history = impl.training.Trainer(model, framework_optimizer(backend, model), callbacks).fit(batches, batches, 5)
    assert len(history) == 2 and "Early stopping at epoch 1" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0.pt", "epoch_1.pt"]  # val_loss fell both epochs
    model = regressor(backend)
    resumed = impl.training.Trainer(model, framework_optimizer(backend, model), callbacks)
    resumed.load_checkpoint(tmp_path / "epoch_0.pt")
    assert resumed.epoch == 1 and resumed.history["val_loss"] == history["val_loss"][:1]
