"""What ``fit`` refuses before the first batch: an epoch count that is not one, a run already past
it, a callback monitoring a metric the run cannot log."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any


def check_fit(num_epochs: Any, trained_epochs: int, callbacks: Sequence, *, has_val_loader: bool) -> None:
    """Raises ``ValueError`` (``TypeError`` for a non-integer count) naming the problem and the fix.

    ``num_epochs`` counts the epochs in total, those a resumed run already trained included: a
    trainer resumed at epoch 3 and fit with ``num_epochs=2`` would train nothing, so it is refused
    (equal counts are fine: a finished run fit again trains nothing, as asked). A callback's
    ``needed_metrics()`` (EarlyStopping, ModelCheckpoint) naming ``val_loss`` needs a val loader.
    """
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, numbers.Integral):
        raise TypeError(f"num_epochs must be an integer >= 0, got {num_epochs!r}")
    if num_epochs < 0:
        raise ValueError(f"num_epochs must be an integer >= 0, got {num_epochs}")
    if trained_epochs > num_epochs:
        raise ValueError(
            f"num_epochs={num_epochs}, but this trainer has already trained {trained_epochs} epochs (resumed from a "
            f"checkpoint?): num_epochs counts every epoch, those before the resume included, so nothing would "
            f"train; pass num_epochs > {trained_epochs}"
        )
    if has_val_loader:
        return
    for callback in callbacks:
        needed = getattr(callback, "needed_metrics", None)
        if needed is not None and "val_loss" in needed():
            raise ValueError(
                f"{type(callback).__name__} monitors 'val_loss', which this fit cannot log: no val_loader was given. "
                "Pass a val_loader, or monitor 'train_loss'"
            )
