"""Trainer of each backend alone: callbacks, checkpoints, resume (bit-exact), a kill mid-save."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import jax_impl.data
import jax_impl.models
import jax_impl.molecules.models
import jax_impl.training
import torch_impl.data
import torch_impl.models
import torch_impl.molecules.models
import torch_impl.training
from ml_patterns.callbacks import EarlyStopping, HistoryLogger, ModelCheckpoint, StopReason
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.data import LazyDataset, Subset
from ml_patterns.optim import OptimizerConfig
from ml_patterns.training import load_training_checkpoint

IMPLS = {"torch": torch_impl, "jax": jax_impl}
OPTIMIZER = OptimizerConfig("adamw", learning_rate=2e-3, weight_decay=0.01)
COLLATE = dict(buckets=(64,), max_length=64)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(default_dataset):
    root, manifest = default_dataset
    return manifest, Subset(LazyDataset(root, split="train"), range(96)), Subset(LazyDataset(root, split="val"), range(32))


def config_for(manifest, dropout=0.1):
    return ModelConfig.from_manifest(manifest, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=64,
                                     dropout=dropout, attention_dropout=dropout, seed=1)


def make_trainer(impl, manifest, callbacks=(), dropout=0.1, optimizer=OPTIMIZER):
    torch.manual_seed(0)  # torch's dropout draws from the global generator
    return impl.training.Trainer(impl.molecules.models.build_model(config_for(manifest, dropout)), optimizer, list(callbacks))


def loaders(impl, train, val):
    return impl.data.make_loader(train, 16, seed=3, **COLLATE), impl.data.make_loader(val, 16, shuffle=False, **COLLATE)


@pytest.mark.parametrize("backend", IMPLS)
def test_train_returns_per_epoch_history(backend, data):
    impl = IMPLS[backend]
    manifest, train, val = data
    model = impl.molecules.models.build_model(config_for(manifest))
    history = impl.training.train(model, *loaders(impl, train, val), OPTIMIZER, 3)
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
    reference = make_trainer(IMPLS[writer], manifest, dropout=0.0).fit(*loaders(IMPLS[writer], train, val), num_epochs=4)
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
    checkpoints = ModelCheckpoint(tmp_path / "ckpts", filename="epoch{epoch}", save_top_k=2, save_last=True)
    stopper = EarlyStopping(patience=1, min_delta=10.0)  # no epoch improves by 10: stops after epoch 1
    trainer = make_trainer(impl, manifest, [checkpoints, stopper, HistoryLogger(tmp_path / "history")])
    history = trainer.fit(*loaders(impl, train, val), num_epochs=5)
    assert len(history) == 2 and trainer.should_stop
    assert stopper.stop_reason is StopReason.PATIENCE_EXHAUSTED and "EarlyStopping at epoch 1" in trainer.stop_reason
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["epoch0.ckpt", "epoch1.ckpt", "last.ckpt"]
    _, _, saved = load_training_checkpoint(tmp_path / "ckpts" / "last.ckpt")
    assert saved["epoch"] == 2 and saved["optimizer"]["step"] == 12 and saved["history"] == history.as_dict()
    assert json.loads((tmp_path / "history.json").read_text()) == history.as_dict()


@pytest.mark.parametrize("backend", IMPLS)
def test_non_finite_loss_stops_training(backend, data):
    impl = IMPLS[backend]
    manifest, train, val = data
    diverging = OptimizerConfig("sgd", learning_rate=1e12, momentum=0.9)
    stopper = EarlyStopping(monitor="train_loss", patience=5)
    history = make_trainer(impl, manifest, [stopper], optimizer=diverging).fit(*loaders(impl, train, val), num_epochs=6)
    assert stopper.stop_reason is StopReason.NON_FINITE
    assert len(history) < 6 and not np.isfinite(history["train_loss"][-1])


@pytest.mark.parametrize("backend", IMPLS)
def test_load_refuses_another_optimizer(backend, data, tmp_path):
    impl = IMPLS[backend]
    manifest, train, val = data
    trainer = make_trainer(impl, manifest)
    trainer.save_checkpoint(tmp_path / "ckpt")
    other = make_trainer(impl, manifest, optimizer=OptimizerConfig("sgd", learning_rate=0.1))
    with pytest.raises(ValueError, match="optimizer 'adamw'"):
        other.load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError):
        other.load_checkpoint(tmp_path / "missing")


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)  # as the parent (conftest.py): the same arithmetic, bit for bit
    import ml_patterns.training as training
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
    manifest = json.loads((root / "manifest.json").read_text()) if root.exists() else prepare_dataset(root, progress=False)
    return manifest, Subset(LazyDataset(root, split="train"), range(96)), Subset(LazyDataset(root, split="val"), range(32))


@pytest.mark.parametrize("backend", IMPLS)
def test_a_run_killed_during_a_checkpoint_save_loses_nothing(backend, data, default_dataset, tmp_path):
    impl = IMPLS[backend]
    manifest, train, val = data
    out = tmp_path / "ckpts"
    env = {**os.environ, "ML_PATTERNS_TEST_DATA": str(default_dataset[0]), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", KILLED_RUN, backend, str(out)], env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == -9, result.stderr[-3000:]

    # The last complete checkpoint (after epoch 1) is intact; the interrupted one left only a
    # hidden staging directory, which no reader takes for a checkpoint.
    _, _, saved = load_training_checkpoint(out / "last.ckpt")
    assert saved["epoch"] == 2
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == ["last.ckpt"]

    resumed = make_trainer(impl, manifest, [ModelCheckpoint(out, save_top_k=0, save_last=True)])
    resumed.load_checkpoint(out / "last.ckpt")
    history = resumed.fit(*loaders(impl, train, val), num_epochs=4)
    reference = make_trainer(impl, manifest).fit(*loaders(impl, train, val), num_epochs=4)
    assert history.as_dict() == reference.as_dict()


def test_jax_trainer_compiles_its_step_once_per_shape(data):
    manifest, train, val = data
    # An optimizer no other test uses: the compiled steps are shared by trainers alike.
    trainer = make_trainer(jax_impl, manifest, optimizer=OptimizerConfig("adamw", learning_rate=3e-3, weight_decay=0.02))
    trainer.fit(*loaders(jax_impl, train, val), num_epochs=2)  # one padded shape (COLLATE)
    assert trainer.train_step._cache_size() == 1
    assert trainer.eval_step._cache_size() == 1
