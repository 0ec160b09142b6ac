"""Metrics a callback adds to an epoch's ``metrics`` reach ``trainer.history``, HistoryLogger's
files and the checkpoint, on both backends, and drive the callbacks after it."""

from __future__ import annotations

import csv
import json
import math

import pytest

from ml_patterns.callbacks import Callback, EarlyStopping, HistoryLogger
from ml_patterns.history import History
from ml_patterns.optim import OptimizerConfig
from ml_patterns.training_checkpoint import load_training_checkpoint
from tests.test_training import IMPLS, regression_batches, regressor

OPTIMIZER = OptimizerConfig("adamw", learning_rate=0.05, weight_decay=0.01)
ACCURACY = [0.5, 0.75, 0.8, 0.8, 0.7]  # scripted: no improvement after epoch 2


class Accuracy(Callback):
    """Puts a scripted ``val_acc`` into the epoch's metrics, as a user's metric callback would."""

    def on_epoch_end(self, epoch, trainer, metrics):
        metrics["val_acc"] = ACCURACY[epoch]


class Sometimes(Callback):
    """Logs ``lr_probe`` from epoch 1 on, and not at epoch 3."""

    def on_epoch_end(self, epoch, trainer, metrics):
        if epoch in (1, 2, 4):
            metrics["lr_probe"] = 10.0 * epoch


@pytest.mark.parametrize("backend", IMPLS)
def test_a_callback_metric_reaches_the_history_the_csv_and_the_checkpoint(backend, tmp_path):
    # The logger first: it writes once every callback has seen the epoch, so order does not matter.
    stopper = EarlyStopping(patience=2, min_delta=0.0, monitor="val_acc", mode="max")
    logger = HistoryLogger(tmp_path / "history")
    trainer = IMPLS[backend].training.Trainer(regressor(backend), OPTIMIZER, [logger, Accuracy(), stopper])
    history = trainer.fit(regression_batches(), regression_batches((8, 8)), num_epochs=len(ACCURACY))
    assert "EarlyStopping at epoch 4" in trainer.stop_reason
    assert history["val_acc"] == ACCURACY
    assert list(history.metrics) == ["epoch", "train_loss", "val_loss", "val_acc"]
    with open(tmp_path / "history.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [float(row["val_acc"]) for row in rows] == ACCURACY
    assert json.loads((tmp_path / "history.json").read_text())["val_acc"] == ACCURACY

    trainer.save_checkpoint(tmp_path / "ckpt")
    _, _, saved = load_training_checkpoint(tmp_path / "ckpt")
    assert saved["history"]["val_acc"] == ACCURACY


@pytest.mark.parametrize("backend", IMPLS)
def test_a_metric_logged_in_some_epochs_only_is_nan_in_the_others(backend):
    trainer = IMPLS[backend].training.Trainer(regressor(backend), OPTIMIZER, [Sometimes()])
    history = trainer.fit(regression_batches(), num_epochs=5)
    probe = history["lr_probe"]
    assert math.isnan(probe[0]) and math.isnan(probe[3])
    assert [probe[i] for i in (1, 2, 4)] == [10.0, 20.0, 40.0]
    assert len(history["train_loss"]) == 5


def test_update_last_refuses_a_metric_that_is_not_a_number():
    history = History()
    history.append(0, {"train_loss": 1.0})
    with pytest.raises(TypeError, match=r"metric 'note' of epoch 0 is 'good', not a number"):
        history.update_last({"note": "good"})
    history.update_last({"train_loss": 0.5, "val_acc": 1})
    assert history.as_dict() == {"epoch": [0], "train_loss": [0.5], "val_acc": [1.0]}
