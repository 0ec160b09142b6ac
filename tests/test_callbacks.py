"""Callbacks' decisions from tables of scripted metric sequences (the Lightning style)."""

import json
import math

import numpy as np
import pytest

from ml_patterns.callbacks import EarlyStopping, HistoryLogger, ModelCheckpoint, StopReason
from ml_patterns.history import History

NAN, INF = math.nan, math.inf


class FakeTrainer:
    """The TrainerProtocol, with 'weights' being the epoch at which they were snapshot."""

    def __init__(self):
        self.should_stop = False
        self.stop_reason = None
        self.history = History()
        self.batches_per_epoch = None
        self.last_batch_size = 0
        self.weights = None
        self.saved = []

    def save_checkpoint(self, path):
        path.write_text(str(self.weights))
        self.saved.append(path.name)

    def snapshot_weights(self):
        return self.weights

    def restore_weights(self, snapshot):
        self.weights = snapshot


def run(callback, values, monitor="val_loss", stop_requested_at=None):
    """Feeds values epoch by epoch until the trainer is told to stop (by the callback, or by another
    callback at ``stop_requested_at``); returns (stop epoch, trainer)."""
    trainer = FakeTrainer()
    callback.on_train_start(trainer)
    stopped_at = None
    for epoch, value in enumerate(values):
        trainer.weights = epoch
        logs = {monitor: value}
        trainer.history.append(epoch, logs)
        callback.on_epoch_end(epoch, trainer, logs)
        trainer.should_stop |= epoch == stop_requested_at
        if trainer.should_stop:
            stopped_at = epoch
            break
    callback.on_train_end(trainer)
    return stopped_at, trainer


KERAS_PATIENCE_LOSSES = [10.0, 9.0, 8.0, 9.0, 8.9, 8.8, 8.7, 8.6, 8.5]


@pytest.mark.parametrize(
    ("values", "kwargs", "stop_epoch", "reason"),
    [
        # Lightning's own table: stops after `patience` epochs without improvement.
        ([6, 5, 5, 5, 5, 5], dict(patience=3), 4, StopReason.PATIENCE_EXHAUSTED),
        ([6, 5, 4, 4, 3, 3], dict(patience=1), 3, StopReason.PATIENCE_EXHAUSTED),
        ([6, 5, 6, 5, 5, 5], dict(patience=3), 4, StopReason.PATIENCE_EXHAUSTED),
        ([5, 4, 3, 2, 1, 0], dict(patience=1), None, StopReason.NOT_STOPPED),
        # Keras' test_early_stopping_patience: stopped_epoch == max(patience, 1) + 2.
        *[
            (KERAS_PATIENCE_LOSSES, dict(patience=p, min_delta=0.0), max(p, 1) + 2, StopReason.PATIENCE_EXHAUSTED)
            for p in range(4)
        ],
        # min_delta is strict: 4.9 is not better than 5 - 0.1.
        ([5, 4.9, 4.95, 4.91], dict(patience=3, min_delta=0.1), 3, StopReason.PATIENCE_EXHAUSTED),
        ([5, 4.89, 4.78, 4.67], dict(patience=1, min_delta=0.1), None, StopReason.NOT_STOPPED),
        # mode=max
        ([0.1, 0.2, 0.2, 0.3], dict(mode="max", patience=1), 2, StopReason.PATIENCE_EXHAUSTED),
        # baseline (Keras): an improving epoch never stops training, but resets the wait only if it
        # also beats the baseline; so epochs that improve without reaching it still use up patience.
        ([10, 9, 8, 7], dict(patience=3, baseline=5.0), None, StopReason.NOT_STOPPED),
        ([10, 9, 8, 8, 8], dict(patience=3, baseline=5.0), 3, StopReason.PATIENCE_EXHAUSTED),
        ([10, 9, 8, 7, 7.5], dict(patience=3, baseline=5.0), 4, StopReason.PATIENCE_EXHAUSTED),
        ([10, 4, 4, 4], dict(patience=2, baseline=5.0), 3, StopReason.PATIENCE_EXHAUSTED),
        ([0.9, 0.8, 0.7, 0.71, 0.72, 0.73], dict(patience=5, baseline=0.5), 4, StopReason.PATIENCE_EXHAUSTED),
        ([0.1, 0.2, 0.2, 0.3], dict(mode="max", patience=2, baseline=0.5), 2, StopReason.PATIENCE_EXHAUSTED),
        # start_from_epoch (Keras): earlier epochs are ignored entirely, the wait counts from it.
        ([1, 1, 1, 5, 5, 5], dict(patience=2, start_from_epoch=3), 5, StopReason.PATIENCE_EXHAUSTED),
        ([5, 5, 5, 5], dict(patience=1, start_from_epoch=2), 3, StopReason.PATIENCE_EXHAUSTED),
        ([5, 4, 3, 3], dict(patience=0, start_from_epoch=2), 3, StopReason.PATIENCE_EXHAUSTED),
        ([5, 6, 7, 6, 5], dict(patience=1, start_from_epoch=2), None, StopReason.NOT_STOPPED),
        ([9, 9, 8, 7, 7, 7], dict(patience=2, baseline=5.0, start_from_epoch=2), 4, StopReason.PATIENCE_EXHAUSTED),
        # non-finite values: never an improvement (Keras); with check_finite they stop at once.
        ([3, NAN, NAN, NAN], dict(patience=3), 3, StopReason.PATIENCE_EXHAUSTED),
        ([3, 2, NAN, 1], dict(patience=5, check_finite=True), 2, StopReason.NON_FINITE),
        ([3, 2, INF, 1], dict(patience=5, check_finite=True), 2, StopReason.NON_FINITE),
        # thresholds
        ([3, 2, 0.9, 0.5], dict(patience=5, stopping_threshold=1.0), 2, StopReason.STOPPING_THRESHOLD),
        ([3, 2, 50, 1], dict(patience=5, divergence_threshold=10.0), 2, StopReason.DIVERGENCE_THRESHOLD),
        ([0.5, 0.9, 0.95], dict(mode="max", patience=5, stopping_threshold=0.9), 2, StopReason.STOPPING_THRESHOLD),
    ],
)
def test_early_stopping_table(values, kwargs, stop_epoch, reason):
    callback = EarlyStopping(**kwargs)
    stopped_at, trainer = run(callback, values)
    assert stopped_at == stop_epoch
    assert callback.stop_reason is reason
    assert callback.stopped_epoch == stop_epoch
    if stop_epoch is not None:
        assert callback.reason_text() in trainer.stop_reason


def test_the_stop_reason_names_the_patience_in_numbers():
    callback = EarlyStopping(patience=3)
    run(callback, [6, 5, 5, 5, 5, 5])
    assert "no improvement for 3 epochs" in callback.reason_text()


def seed_stop_epoch(values, patience, min_delta):
    """The seed's EarlyStopping.on_epoch_end, verbatim in logic."""
    best, counter = float("inf"), 0
    for epoch, value in enumerate(values):
        if value < best - min_delta:
            best, counter = value, 0
        else:
            counter += 1
        if counter >= patience:
            return epoch
    return None


@pytest.mark.parametrize("seed", range(40))
def test_early_stopping_decides_as_the_seed_without_baseline(seed):
    rng = np.random.default_rng(seed)
    values = list(np.round(10 - np.cumsum(rng.normal(0.05, 0.1, size=30)), 2))
    patience, min_delta = int(rng.integers(1, 5)), float(rng.choice([0.0, 1e-4, 0.05]))
    stopped_at, _ = run(EarlyStopping(patience, min_delta), values)
    assert stopped_at == seed_stop_epoch(values, patience, min_delta)


def test_early_stopping_seed_defaults_and_positional_order():
    callback = EarlyStopping(10, 1e-4)
    default = EarlyStopping()
    for c in (callback, default):
        assert (c.patience, c.min_delta, c.monitor, c.mode) == (10, 1e-4, "val_loss", "min")


def test_restore_best_weights():
    callback = EarlyStopping(patience=2, restore_best_weights=True)
    stopped_at, trainer = run(callback, [5, 3, 4, 4])
    assert stopped_at == 3
    assert callback.best_epoch == 1
    assert trainer.weights == 1


@pytest.mark.parametrize(
    ("values", "kwargs", "stop_requested_at", "trained", "weights"),
    [
        # Keras' test_early_stopping_final_weights_when_restoring_model_weights, its three cases.
        ([0.2, 0.15, 0.1, 0.11, 0.12], dict(patience=2), None, 5, 2),
        ([0.9, 0.8, 0.7, 0.71, 0.72, 0.73], dict(patience=5, baseline=0.5), None, 5, 2),
        ([0.9, 0.8, 0.7, 0.71, 0.72, 0.73], dict(patience=5, baseline=0.5), 3, 4, 2),
    ],
)
def test_restore_best_weights_as_keras(values, kwargs, stop_requested_at, trained, weights):
    callback = EarlyStopping(restore_best_weights=True, **kwargs)
    stopped_at, trainer = run(callback, values, stop_requested_at=stop_requested_at)
    assert stopped_at + 1 == trained
    assert trainer.weights == weights


def test_best_weights_not_restored_when_last_epoch_is_best():
    _, trainer = run(EarlyStopping(patience=2, restore_best_weights=True), [5, 4, 3])
    assert trainer.weights == 2


def test_missing_monitor_lists_available_keys():
    with pytest.raises(KeyError, match=r"'val_acc' is not among the logged metrics \['val_loss'\]"):
        run(EarlyStopping(monitor="val_acc"), [1.0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(mode="minimum"), "mode must be"),
        (dict(patience=-1), "patience must be"),
        (dict(min_delta=-1), "min_delta must be"),
    ],
)
def test_early_stopping_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EarlyStopping(**kwargs)


@pytest.mark.parametrize("cut", range(1, 6))
def test_early_stopping_resumes_with_the_same_decisions(cut):
    values = [6, 5, 5.5, 4, 4.5, 4.4, 4.6, 4.7]
    reference, _ = run(EarlyStopping(patience=3), values)
    first = EarlyStopping(patience=3)
    for epoch, value in enumerate(values[:cut]):
        first.update(epoch, value)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON round trip
    resumed = EarlyStopping(patience=3)
    resumed.load_state_dict(state)
    stopped_at = None
    for epoch, value in enumerate(values[cut:], start=cut):
        if resumed.update(epoch, value)[1]:
            stopped_at = epoch
            break
    assert stopped_at == reference == 6  # Keras: 4.4 improves (wait 0), 4.6, 4.7 and epoch 7 would wait


def checkpoint_run(tmp_path, values, **kwargs):
    callback = ModelCheckpoint(tmp_path, filename="epoch{epoch:02d}-{val_loss:.2f}", **kwargs)
    _, trainer = run(callback, values)
    return callback, sorted(p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    ("values", "kwargs", "kept", "best"),
    [
        # the seed's default (save_best_only=True): every improvement saved, none deleted
        ([3, 2, 4, 1], dict(), ["epoch00-3.00", "epoch01-2.00", "epoch03-1.00"], "epoch03-1.00"),
        ([3, 3, 4, 5], dict(), ["epoch00-3.00"], "epoch00-3.00"),
        # save_best_only=False: every epoch (the seed), or the k best of them (Lightning's save_top_k)
        (
            [3, 2, 4, 1],
            dict(save_best_only=False),
            ["epoch00-3.00", "epoch01-2.00", "epoch02-4.00", "epoch03-1.00"],
            "epoch03-1.00",
        ),
        ([3, 2, 4, 1], dict(save_best_only=False, save_top_k=1), ["epoch03-1.00"], "epoch03-1.00"),
        ([3, 2, 4, 1], dict(save_best_only=False, save_top_k=2), ["epoch01-2.00", "epoch03-1.00"], "epoch03-1.00"),
        ([3, 2, 4, 1], dict(save_top_k=0, save_last=True), ["last"], None),
        ([3, 2, 4, 1], dict(save_top_k=1, save_last=True), ["epoch03-1.00", "last"], "epoch03-1.00"),
        ([3, 2, 4, 1], dict(save_top_k=1, mode="max"), ["epoch02-4.00"], "epoch02-4.00"),
        ([3, NAN, 2], dict(save_best_only=False, save_top_k=2), ["epoch00-3.00", "epoch02-2.00"], "epoch02-2.00"),
        # equal is not better: the first stays
        ([2, 2, 2], dict(save_best_only=False, save_top_k=1), ["epoch00-2.00"], "epoch00-2.00"),
    ],
)
def test_model_checkpoint_table(tmp_path, values, kwargs, kept, best):
    callback, files = checkpoint_run(tmp_path, values, **kwargs)
    assert files == kept
    assert callback.best_model_path == (str(tmp_path / best) if best else None)


def test_model_checkpoint_seed_positional_and_default_names(tmp_path):
    run(ModelCheckpoint(tmp_path / "best"), [3, 2, 4, 1])
    run(ModelCheckpoint(tmp_path / "all", False), [3, 2, 4, 1])
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["epoch_0", "epoch_1", "epoch_3"]
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["epoch_0", "epoch_1", "epoch_2", "epoch_3"]


def test_model_checkpoint_every_epoch_needs_no_val_loss(tmp_path):
    run(ModelCheckpoint(tmp_path, save_best_only=False), [1.0, 2.0], monitor="train_loss")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0", "epoch_1"]
    with pytest.raises(KeyError, match=r"'val_loss' is not among the logged metrics \['train_loss'\]"):
        run(ModelCheckpoint(tmp_path / "best"), [1.0], monitor="train_loss")


def test_model_checkpoint_without_monitor_saves_every_epoch(tmp_path):
    callback = ModelCheckpoint(tmp_path, False, filename="e{epoch}", monitor=None)
    run(callback, [1, 2, 3])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e0", "e1", "e2"]


def test_model_checkpoint_template_with_unknown_field(tmp_path):
    callback = ModelCheckpoint(tmp_path, filename="{epoch}-{val_acc:.2f}")
    with pytest.raises(KeyError, match=r"\['val_acc'\]"):
        run(callback, [1.0])


def test_model_checkpoint_resumes(tmp_path):
    values = [3, 2, 4, 1, 5]
    first = ModelCheckpoint(tmp_path, False, filename="e{epoch}", save_top_k=2)
    run(first, values[:3])
    resumed = ModelCheckpoint(tmp_path, False, filename="e{epoch}", save_top_k=2)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    trainer = FakeTrainer()
    for epoch, value in enumerate(values[3:], start=3):
        resumed.on_epoch_end(epoch, trainer, {"val_loss": value})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e1", "e3"]


def test_model_checkpoint_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="save_top_k must be"):
        ModelCheckpoint(tmp_path, save_top_k=-2)
    with pytest.raises(ValueError, match="need a monitor"):
        ModelCheckpoint(tmp_path, False, monitor=None, save_top_k=2)
    with pytest.raises(ValueError, match="need a monitor"):
        ModelCheckpoint(tmp_path, monitor=None)  # save_best_only=True by default


def test_history_logger_writes_csv_and_json(tmp_path):
    trainer = FakeTrainer()
    logger = HistoryLogger(tmp_path / "history")
    for epoch, (a, b) in enumerate([(1.5, 2.0), (1.0, 1.25)]):
        logs = {"train_loss": a, "val_loss": b}
        trainer.history.append(epoch, logs)
        logger.on_epoch_end(epoch, trainer, logs)
    assert (tmp_path / "history.csv").read_text() == "epoch,train_loss,val_loss\n0,1.5,2.0\n1,1.0,1.25\n"
    assert json.loads((tmp_path / "history.json").read_text())["val_loss"] == [2.0, 1.25]


def test_history_refuses_changing_keys():
    history = History()
    history.append(0, {"train_loss": 1.0})
    with pytest.raises(KeyError, match="epoch 1"):
        history.append(1, {"loss": 1.0})
