"""Callbacks' decisions from tables of scripted metric sequences (the Lightning style)."""

import json
import math

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
        self.weights = None
        self.saved = []

    def save_checkpoint(self, path):
        path.write_text(str(self.weights))
        self.saved.append(path.name)

    def snapshot_weights(self):
        return self.weights

    def restore_weights(self, snapshot):
        self.weights = snapshot


def run(callback, values, monitor="val_loss"):
    """Feeds values epoch by epoch until the trainer is told to stop; returns (stop epoch, trainer)."""
    trainer = FakeTrainer()
    callback.on_train_start(trainer)
    stopped_at = None
    for epoch, value in enumerate(values):
        trainer.weights = epoch
        logs = {monitor: value}
        trainer.history.append(epoch, logs)
        callback.on_epoch_end(trainer, epoch, logs)
        if trainer.should_stop:
            stopped_at = epoch
            break
    callback.on_train_end(trainer)
    return stopped_at, trainer


@pytest.mark.parametrize(("values", "kwargs", "stop_epoch", "reason"), [
    # Lightning's own table: stops after `patience` epochs without improvement.
    ([6, 5, 5, 5, 5, 5], dict(patience=3), 4, StopReason.PATIENCE_EXHAUSTED),
    ([6, 5, 4, 4, 3, 3], dict(patience=1), 3, StopReason.PATIENCE_EXHAUSTED),
    ([6, 5, 6, 5, 5, 5], dict(patience=3), 4, StopReason.PATIENCE_EXHAUSTED),
    ([5, 4, 3, 2, 1, 0], dict(patience=1), None, StopReason.NOT_STOPPED),
    # min_delta is strict: 4.9 is not better than 5 - 0.1.
    ([5, 4.9, 4.95, 4.91], dict(patience=3, min_delta=0.1), 3, StopReason.PATIENCE_EXHAUSTED),
    ([5, 4.89, 4.78, 4.67], dict(patience=1, min_delta=0.1), None, StopReason.NOT_STOPPED),
    # mode=max
    ([0.1, 0.2, 0.2, 0.3], dict(mode="max", patience=1), 2, StopReason.PATIENCE_EXHAUSTED),
    # baseline: improvements that do not beat the baseline still count towards patience (Keras).
    ([10, 9, 8, 7], dict(patience=3, baseline=5.0), 2, StopReason.PATIENCE_EXHAUSTED),
    ([10, 4, 4, 4], dict(patience=2, baseline=5.0), 3, StopReason.PATIENCE_EXHAUSTED),
    # epochs before start_from_epoch are ignored.
    ([1, 1, 1, 5, 5, 5], dict(patience=2, start_from_epoch=3), 5, StopReason.PATIENCE_EXHAUSTED),
    # non-finite values stop at once with check_finite, and never improve without it.
    ([3, 2, NAN, 1], dict(patience=5), 2, StopReason.NON_FINITE),
    ([3, 2, INF, 1], dict(patience=5), 2, StopReason.NON_FINITE),
    ([3, NAN, NAN, NAN], dict(patience=3, check_finite=False), 3, StopReason.PATIENCE_EXHAUSTED),
    # thresholds
    ([3, 2, 0.9, 0.5], dict(patience=5, stopping_threshold=1.0), 2, StopReason.STOPPING_THRESHOLD),
    ([3, 2, 50, 1], dict(patience=5, divergence_threshold=10.0), 2, StopReason.DIVERGENCE_THRESHOLD),
    ([0.5, 0.9, 0.95], dict(mode="max", patience=5, stopping_threshold=0.9), 2, StopReason.STOPPING_THRESHOLD),
])
def test_early_stopping_table(values, kwargs, stop_epoch, reason):
    callback = EarlyStopping(**kwargs)
    stopped_at, trainer = run(callback, values)
    assert stopped_at == stop_epoch
    assert callback.stop_reason is reason
    assert callback.stopped_epoch == stop_epoch
    if stop_epoch is not None:
        assert reason.value in trainer.stop_reason


def test_restore_best_weights():
    callback = EarlyStopping(patience=2, restore_best_weights=True)
    stopped_at, trainer = run(callback, [5, 3, 4, 4])
    assert stopped_at == 3
    assert callback.best_epoch == 1
    assert trainer.weights == 1


def test_best_weights_not_restored_when_last_epoch_is_best():
    _, trainer = run(EarlyStopping(patience=2, restore_best_weights=True), [5, 4, 3])
    assert trainer.weights == 2


def test_missing_monitor_lists_available_keys():
    with pytest.raises(KeyError, match=r"'val_acc' is not among the logged metrics \['val_loss'\]"):
        run(EarlyStopping(monitor="val_acc"), [1.0])


@pytest.mark.parametrize("kwargs", [dict(mode="minimum"), dict(patience=0), dict(min_delta=-1)])
def test_early_stopping_bad_arguments(kwargs):
    with pytest.raises(ValueError):
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
    assert stopped_at == reference == 6


def checkpoint_run(tmp_path, values, **kwargs):
    callback = ModelCheckpoint(tmp_path, filename="epoch{epoch:02d}-{val_loss:.2f}", **kwargs)
    _, trainer = run(callback, values)
    return callback, sorted(p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize(("values", "kwargs", "kept", "best"), [
    ([3, 2, 4, 1], dict(save_top_k=1), ["epoch03-1.00.ckpt"], "epoch03-1.00.ckpt"),
    ([3, 2, 4, 1], dict(save_top_k=2), ["epoch01-2.00.ckpt", "epoch03-1.00.ckpt"], "epoch03-1.00.ckpt"),
    ([3, 2, 4, 1], dict(save_top_k=-1),
     ["epoch00-3.00.ckpt", "epoch01-2.00.ckpt", "epoch02-4.00.ckpt", "epoch03-1.00.ckpt"], "epoch03-1.00.ckpt"),
    ([3, 2, 4, 1], dict(save_top_k=0, save_last=True), ["last.ckpt"], None),
    ([3, 2, 4, 1], dict(save_top_k=1, save_last=True), ["epoch03-1.00.ckpt", "last.ckpt"], "epoch03-1.00.ckpt"),
    ([3, 2, 4, 1], dict(save_top_k=1, mode="max"), ["epoch02-4.00.ckpt"], "epoch02-4.00.ckpt"),
    ([3, 2, 4, 1], dict(save_top_k=-1, save_best_only=True),
     ["epoch00-3.00.ckpt", "epoch01-2.00.ckpt", "epoch03-1.00.ckpt"], "epoch03-1.00.ckpt"),
    ([3, NAN, 2], dict(save_top_k=2), ["epoch00-3.00.ckpt", "epoch02-2.00.ckpt"], "epoch02-2.00.ckpt"),
    # equal is not better: the first stays
    ([2, 2, 2], dict(save_top_k=1), ["epoch00-2.00.ckpt"], "epoch00-2.00.ckpt"),
])
def test_model_checkpoint_table(tmp_path, values, kwargs, kept, best):
    callback, files = checkpoint_run(tmp_path, values, **kwargs)
    assert files == kept
    assert callback.best_model_path == (str(tmp_path / best) if best else None)


def test_model_checkpoint_without_monitor_saves_every_epoch(tmp_path):
    callback = ModelCheckpoint(tmp_path, filename="e{epoch}", monitor=None, save_top_k=-1)
    run(callback, [1, 2, 3])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e0.ckpt", "e1.ckpt", "e2.ckpt"]


def test_model_checkpoint_template_with_unknown_field(tmp_path):
    callback = ModelCheckpoint(tmp_path, filename="{epoch}-{val_acc:.2f}")
    with pytest.raises(KeyError, match=r"\['val_acc'\]"):
        run(callback, [1.0])


def test_model_checkpoint_resumes(tmp_path):
    values = [3, 2, 4, 1, 5]
    first = ModelCheckpoint(tmp_path, filename="e{epoch}", save_top_k=2)
    run(first, values[:3])
    resumed = ModelCheckpoint(tmp_path, filename="e{epoch}", save_top_k=2)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    trainer = FakeTrainer()
    for epoch, value in enumerate(values[3:], start=3):
        resumed.on_epoch_end(trainer, epoch, {"val_loss": value})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e1.ckpt", "e3.ckpt"]


def test_model_checkpoint_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        ModelCheckpoint(tmp_path, save_top_k=-2)
    with pytest.raises(ValueError):
        ModelCheckpoint(tmp_path, monitor=None, save_top_k=2)


def test_history_logger_writes_csv_and_json(tmp_path):
    trainer = FakeTrainer()
    logger = HistoryLogger(tmp_path / "history")
    for epoch, (a, b) in enumerate([(1.5, 2.0), (1.0, 1.25)]):
        logs = {"train_loss": a, "val_loss": b}
        trainer.history.append(epoch, logs)
        logger.on_epoch_end(trainer, epoch, logs)
    assert (tmp_path / "history.csv").read_text() == "epoch,train_loss,val_loss\n0,1.5,2.0\n1,1.0,1.25\n"
    assert json.loads((tmp_path / "history.json").read_text())["val_loss"] == [2.0, 1.25]


def test_history_refuses_changing_keys():
    history = History()
    history.append(0, {"train_loss": 1.0})
    with pytest.raises(KeyError, match="epoch 1"):
        history.append(1, {"loss": 1.0})
