"""Callbacks, written once against the trainer protocol and driving both backends' ``Trainer``.

As in Keras 3, callbacks live above the backends: a trainer (``torch_impl.training.Trainer`` or
``jax_impl.training.Trainer``) calls the hooks and exposes the small ``TrainerProtocol`` below; the
callbacks never touch a framework. Their decisions are pure functions of the metric history
(``EarlyStopping.update``, ``ModelCheckpoint.plan``), tested from tables, and every callback has
``state_dict()``/``load_state_dict()`` so a resumed run decides exactly as the uninterrupted one.

The hooks are the seed's, in this order per run: ``on_train_start(trainer)``, then per epoch
``on_epoch_start(epoch, trainer)``, ``on_batch_end(batch_idx, trainer, loss)`` after every
optimizer step, ``on_epoch_end(epoch, trainer, metrics)`` (``metrics``: the epoch's floats,
``train_loss`` and ``val_loss``; a callback may add its own, e.g. ``metrics["val_acc"] = ...``: the
callbacks after it see them, and the trainer records them in ``trainer.history``, so they reach
``HistoryLogger``'s files and checkpoints too), and finally ``on_train_end(trainer)``. ``loss`` in
``on_batch_end`` is the batch's mean loss as a device scalar (a torch tensor, a JAX array):
``float(loss)`` works on both, and is a host sync, so a callback should read it rarely.

A trainer calls only the hooks a callback defines and saves ``state_dict()`` only where there is
one, so a callback written against the seed's own ``Callback`` base class (three hooks, no state)
drives both trainers as it is.
"""

from __future__ import annotations

import enum
import math
import operator
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ml_patterns.errors import DestinationError
from ml_patterns.history import History, foreign_to_history


class TrainerProtocol(Protocol):
    """What callbacks may use of a trainer (both backends implement it). Both trainers also have
    ``after_callbacks(action)``, used through ``after_callbacks`` below (a trainer without it runs
    the action at once)."""

    should_stop: bool
    stop_reason: str | None
    history: History
    batches_per_epoch: int | None  # None when the loader has no len()
    last_batch_size: int  # samples in the batch of the latest on_batch_end

    def save_checkpoint(self, path: str | os.PathLike) -> None: ...

    def snapshot_weights(self) -> Any:
        """An opaque copy of the current weights (kept by EarlyStopping.restore_best_weights)."""

    def restore_weights(self, snapshot: Any) -> None: ...


class Callback:
    """Base class: every hook does nothing; ``state_dict`` is empty."""

    def on_train_start(self, trainer: TrainerProtocol) -> None: ...

    def on_epoch_start(self, epoch: int, trainer: TrainerProtocol) -> None: ...

    def on_batch_end(self, batch_idx: int, trainer: TrainerProtocol, loss: Any) -> None: ...

    def on_epoch_end(self, epoch: int, trainer: TrainerProtocol, metrics: Mapping[str, float]) -> None: ...

    def on_train_end(self, trainer: TrainerProtocol) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


# "Better" is strict: equal is not an improvement (Keras and Lightning).
_BETTER = {"min": operator.lt, "max": operator.gt}


def _check_mode(mode: str) -> None:
    if mode not in _BETTER:
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")


def monitored_value(logs: Mapping[str, float], monitor: str) -> float:
    """``logs[monitor]`` as a float; a missing key raises a KeyError listing the keys that exist."""
    if monitor not in logs:
        raise KeyError(f"monitored metric {monitor!r} is not among the logged metrics {sorted(logs)}")
    return float(logs[monitor])


class StopReason(str, enum.Enum):
    NOT_STOPPED = "not stopped"
    PATIENCE_EXHAUSTED = "no improvement for {patience} epochs"  # formatted by EarlyStopping.reason_text
    NON_FINITE = "monitored metric is NaN or infinite"
    STOPPING_THRESHOLD = "monitored metric reached stopping_threshold"
    DIVERGENCE_THRESHOLD = "monitored metric crossed divergence_threshold"


class EarlyStopping(Callback):
    """Stops training when the monitored metric stops improving: the seed's
    ``EarlyStopping(patience=10, min_delta=1e-4)``, deciding as Keras 3's ``on_epoch_end`` does.

    Per epoch (``update``), exactly Keras 3's rule:

    - epochs before ``start_from_epoch`` are ignored entirely;
    - otherwise ``wait`` grows by one, and the epoch improves when ``current`` beats ``best`` by
      more than ``min_delta`` (strict; ``best`` starts at +inf, or -inf with ``mode="max"``);
    - an improving epoch becomes ``best`` and never stops training; it resets ``wait`` only if it
      also beats ``baseline`` (when one is given), so with a baseline no epoch reaches, training
      stops ``patience`` epochs after the first monitored one;
    - a non-improving epoch stops training once ``wait >= patience`` (and it is not epoch 0): so
      ``[6, 5, 5, 5, 5, 5]`` with ``patience=3`` stops after epoch 4 (0-based). flax's
      ``early_stopping`` would wait one epoch more; we do not;
    - ``restore_best_weights``: the weights of the best epoch (of the first monitored epoch until
      one improves) are put back at the end of training, unless the last epoch was the best.

    Options beyond Keras, off by default (Lightning's): ``check_finite`` stops at once on a NaN or
    infinite value (the trainer already stops on non-finite losses by default, see
    ``ml_patterns.training``); ``stopping_threshold`` stops once the metric is better than it, and
    ``divergence_threshold`` once it is worse than it. A monitored key missing from the metrics
    raises a ``KeyError`` listing those present (Keras warns and skips the epoch).
    """

    def __init__(
        self,
        patience: int = 10,
        min_delta: float = 1e-4,
        *,
        monitor: str = "val_loss",
        mode: str = "min",
        baseline: float | None = None,
        start_from_epoch: int = 0,
        restore_best_weights: bool = False,
        check_finite: bool = False,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        verbose: bool = False,
    ):
        _check_mode(mode)
        if patience < 0:
            raise ValueError(f"patience must be non-negative, got {patience}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be non-negative, got {min_delta}")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.baseline, self.start_from_epoch = baseline, start_from_epoch
        self.restore_best_weights, self.check_finite = restore_best_weights, check_finite
        self.stopping_threshold, self.divergence_threshold = stopping_threshold, divergence_threshold
        self.verbose = verbose
        self._better = _BETTER[mode]
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.stop_reason = StopReason.NOT_STOPPED
        self._best_weights: Any = None
        self._best_weights_epoch: int | None = None
        self._last_epoch: int | None = None
        self._stop_message: str | None = None
        self._resumed_stopped = False  # restored from a checkpoint of a run that had stopped

    def _improves(self, current: float, reference: float) -> bool:
        delta = self.min_delta if self.mode == "max" else -self.min_delta
        return self._better(current - delta, reference)

    def update(self, epoch: int, current: float) -> tuple[bool, bool]:
        """Feeds one epoch's value; returns ``(improved, stop)``. The pure decision logic."""
        self._last_epoch = epoch
        if epoch < self.start_from_epoch:
            return False, False
        if self.check_finite and not math.isfinite(current):
            return False, self._stop(epoch, StopReason.NON_FINITE)
        if self.stopping_threshold is not None and self._better(current, self.stopping_threshold):
            return self._improves(current, self.best), self._stop(epoch, StopReason.STOPPING_THRESHOLD)
        if self.divergence_threshold is not None and self._better(self.divergence_threshold, current):
            return False, self._stop(epoch, StopReason.DIVERGENCE_THRESHOLD)
        self.wait += 1
        if self._improves(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.baseline is None or self._improves(current, self.baseline):
                self.wait = 0
            return True, False
        if self.wait >= self.patience and epoch > 0:
            return False, self._stop(epoch, StopReason.PATIENCE_EXHAUSTED)
        return False, False

    def _stop(self, epoch: int, reason: StopReason) -> bool:
        self.stopped_epoch, self.stop_reason = epoch, reason
        return True

    def reason_text(self) -> str:
        """Why training stopped, in words, with this callback's numbers ("no improvement for 3 epochs")."""
        return self.stop_reason.value.format(patience=self.patience)

    def needed_metrics(self) -> set[str]:
        """The metrics this callback reads (``fit`` refuses ``val_loss`` without a val loader)."""
        return {self.monitor}

    def on_train_start(self, trainer: TrainerProtocol) -> None:
        self._best_weights = self._best_weights_epoch = None
        if self._resumed_stopped:
            # Resumed from the checkpoint of the epoch the run stopped at: it stays stopped, as the
            # uninterrupted run did, rather than training one more epoch to stop again.
            self._resumed_stopped = False
            trainer.should_stop, trainer.stop_reason = True, self._stop_message

    def on_epoch_end(self, epoch: int, trainer: TrainerProtocol, metrics: Mapping[str, float]) -> None:
        current = monitored_value(metrics, self.monitor)
        improved, stop = self.update(epoch, current)
        # Keras: the first monitored epoch's weights stand for the best until an epoch improves.
        if self.restore_best_weights and (improved or self._best_weights is None) and epoch >= self.start_from_epoch:
            self._best_weights = trainer.snapshot_weights()
            self._best_weights_epoch = epoch
        if stop:
            trainer.should_stop = True
            trainer.stop_reason = f"EarlyStopping at epoch {epoch}: {self.reason_text()} ({self.monitor}={current})"
            self._stop_message = trainer.stop_reason
            if self.verbose and is_main(trainer):
                print(f"Early stopping at epoch {epoch}: {self.reason_text()}")

    def on_train_end(self, trainer: TrainerProtocol) -> None:
        best_is_last = self._best_weights_epoch == self._last_epoch
        if self.restore_best_weights and self._best_weights is not None and not best_is_last:
            trainer.restore_weights(self._best_weights)

    def state_dict(self) -> dict:
        # Best weights are not part of it: a resumed run snapshots again at its next improvement,
        # and the full checkpoint already holds the weights of the epoch it was written at.
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "stop_reason": self.stop_reason.name,
            "last_epoch": self._last_epoch,
            "stop_message": self._stop_message,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.stopped_epoch = state["stopped_epoch"]
        self.stop_reason = StopReason[state["stop_reason"]]
        self._last_epoch = state["last_epoch"]
        self._stop_message = state.get("stop_message")  # absent from checkpoints of older versions
        self._resumed_stopped = self.stopped_epoch is not None
        if self._resumed_stopped and self._stop_message is None:
            self._stop_message = f"EarlyStopping at epoch {self.stopped_epoch}: {self.reason_text()}"


def after_callbacks(trainer: TrainerProtocol, action) -> None:
    """Runs ``action()`` once every callback has seen the epoch (``trainer.after_callbacks``), so a
    checkpoint written by it holds every callback's state after the epoch's updates; at once with a
    trainer that cannot defer."""
    defer = getattr(trainer, "after_callbacks", None)
    if defer is None:
        action()
    else:
        defer(action)


def is_main(trainer: TrainerProtocol) -> bool:
    """Whether ``trainer``'s process does side effects (files, printing): under data parallelism
    rank 0 alone; every rank still runs the callbacks, so their decisions stay the same everywhere."""
    return getattr(trainer, "is_main", True)


class HistoryLogger(Callback):
    """Writes the history to ``NAME.csv`` and ``NAME.json`` after every epoch (atomically), for
    ``path`` = ``NAME`` kept whole (``ml_patterns.history.history_files``). Existing files there
    that are not a history are refused at the start of training (``DestinationError``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def on_train_start(self, trainer: TrainerProtocol) -> None:
        reason = foreign_to_history(self.path) if is_main(trainer) else None
        if reason:
            raise DestinationError(reason)

    def on_epoch_end(self, epoch: int, trainer: TrainerProtocol, metrics: Mapping[str, float]) -> None:
        if is_main(trainer):
            # Once every callback has seen the epoch: the metrics the later ones add are in it too.
            after_callbacks(trainer, lambda: trainer.history.write(self.path))


class ProgressBar(Callback):
    """A tqdm bar per epoch with live loss and throughput.

    The loss shown is read from the device at most every ``refresh_s`` seconds: reading it is a
    host sync, and one every half second costs nothing measurable where one per batch would
    serialize the device queue.
    """

    def __init__(self, refresh_s: float = 0.5, disable: bool | None = None):
        self.refresh_s, self.disable = refresh_s, disable
        self._bar = None

    def on_epoch_start(self, epoch: int, trainer: TrainerProtocol) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=trainer.batches_per_epoch,
            desc=f"epoch {epoch}",
            unit="batch",
            disable=self.disable if is_main(trainer) else True,
            leave=False,
            dynamic_ncols=True,
        )
        self._samples, self._start, self._last_refresh = 0, time.perf_counter(), 0.0

    def on_batch_end(self, batch_idx: int, trainer: TrainerProtocol, loss: Any) -> None:
        self._samples += trainer.last_batch_size
        self._bar.update(1)
        now = time.perf_counter()
        if now - self._last_refresh >= self.refresh_s:
            self._last_refresh = now
            rate = self._samples / max(now - self._start, 1e-9)
            self._bar.set_postfix(loss=f"{float(loss):.4f}", samples_per_s=f"{rate:,.0f}", refresh=False)

    def on_epoch_end(self, epoch: int, trainer: TrainerProtocol, metrics: Mapping[str, float]) -> None:
        self._bar.close()
        if not self._bar.disable:
            summary = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            self._bar.write(f"epoch {epoch}: {summary}")


# Defined in its own module (it imports this one); importable from here as the seed's API has it.
from ml_patterns.model_checkpoint import ModelCheckpoint  # noqa: E402

__all__ = [
    "Callback",
    "EarlyStopping",
    "HistoryLogger",
    "ModelCheckpoint",
    "ProgressBar",
    "StopReason",
    "TrainerProtocol",
    "after_callbacks",
    "is_main",
    "monitored_value",
]
