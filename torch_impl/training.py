"""Training loop and Trainer, torch side: imperative zero_grad / backward / step.

The contract, documented here once (``jax_impl.training`` mirrors it name for name):

- ``Trainer(model, optimizer, callbacks=(), device=None)``: ``model`` is a ``models.BaseModel``
  (anything with ``compute_loss(batch) -> scalar``), ``optimizer`` an
  ``ml_patterns.optim.OptimizerConfig``. ``fit(train_loader, val_loader=None, num_epochs=1)`` runs
  epochs ``trainer.epoch`` .. ``num_epochs - 1`` (``num_epochs`` is the total, so a resumed trainer
  continues where it stopped) and returns the ``History``: ``train_loss`` and ``val_loss`` per
  epoch, weighted per molecule (``ml_patterns.training``).
- Loaders yield collated batches (``data.make_loader``); a molecule model's batch is then prepared
  by ``ml_patterns.training.BatchPreparer`` (standardized labels, token masks), the same on both sides.
- No host sync inside an epoch: losses accumulate on the device and are read once per epoch. The
  only exception is a callback that reads ``logs["loss"]`` in ``on_batch_end`` (ProgressBar does,
  at most twice a second).
- Hooks and callbacks: ``ml_patterns.callbacks``. ``save_checkpoint(path)`` writes the full
  training checkpoint of ``ml_patterns.training``; ``load_checkpoint(path)`` restores one written
  by either backend, and the next ``fit`` resumes from it.
- ``train(...)``: the same loop without callbacks, returning ``{"train_loss": [...], "val_loss": [...]}``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ml_patterns.callbacks import Callback
from ml_patterns.history import History
from ml_patterns.optim import OptimizerConfig
from ml_patterns.training import (
    OPTIMIZER_SLOTS,
    BatchPreparer,
    batch_size_of,
    check_optimizer_state,
    epoch_mean,
    find_sampler,
    load_callback_states,
    load_training_checkpoint,
    optimizer_arrays_to_slots,
    save_training_checkpoint,
)
from torch_impl import state
from torch_impl.models import as_batch
from torch_impl.optim import build_optimizer


class Trainer:
    """See the module docstring for the contract."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: OptimizerConfig,
        callbacks: Sequence[Callback] = (),
        *,
        device: str | torch.device | None = None,
    ):
        self.device = torch.device(device) if device is not None else _default_device()
        self.model = model.to(self.device)
        self.optimizer_config = optimizer
        self.optimizer = build_optimizer(optimizer, self.model.parameters())
        self.callbacks = list(callbacks)
        self.history = History()
        self.epoch = 0  # the next epoch to run
        self.should_stop = False
        self.stop_reason: str | None = None
        self.batches_per_epoch: int | None = None
        self._prepare = BatchPreparer(getattr(model, "config", None))
        self._train_loader = None
        self._pending_sampler_state: dict | None = None

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, train_loader: Iterable, val_loader: Iterable | None = None, num_epochs: int = 1) -> History:
        self._train_loader = train_loader
        self._restore_sampler(train_loader)
        self.batches_per_epoch = len(train_loader) if hasattr(train_loader, "__len__") else None
        self.should_stop = False
        for callback in self.callbacks:
            callback.on_train_start(self)
        while self.epoch < num_epochs and not self.should_stop:
            epoch = self.epoch
            for callback in self.callbacks:
                callback.on_epoch_start(self, epoch)
            logs = {"train_loss": self._train_epoch(train_loader, epoch)}
            if val_loader is not None:
                logs["val_loss"] = self.evaluate(val_loader)
            self.history.append(epoch, logs)
            self.epoch += 1  # before the callbacks: a checkpoint written now resumes at the next epoch
            for callback in self.callbacks:
                callback.on_epoch_end(self, epoch, logs)
        for callback in self.callbacks:
            callback.on_train_end(self)
        return self.history

    def _train_epoch(self, loader: Iterable, epoch: int) -> float:
        self.model.train()
        total = torch.zeros((), device=self.device)
        count = 0
        for index, collated in enumerate(loader):
            batch = as_batch(self._prepare(collated, epoch, index, train=True), self.device)
            self.optimizer.zero_grad()
            loss = self.model.compute_loss(batch)
            loss.backward()
            self.optimizer.step()
            n = batch_size_of(batch)
            total += loss.detach() * n
            count += n
            if self.callbacks:
                logs = {"loss": loss.detach(), "batch_size": n}
                for callback in self.callbacks:
                    callback.on_batch_end(self, index, logs)
        return epoch_mean(total, count)

    @torch.no_grad()
    def evaluate(self, loader: Iterable) -> float:
        """The loss over ``loader``, weighted per molecule, in eval mode (dropout off)."""
        self.model.eval()
        total = torch.zeros((), device=self.device)
        count = 0
        for index, collated in enumerate(loader):
            batch = as_batch(self._prepare(collated, 0, index, train=False), self.device)
            n = batch_size_of(batch)
            total += self.model.compute_loss(batch) * n
            count += n
        return epoch_mean(total, count)

    # -- what callbacks use -----------------------------------------------------------------
    def snapshot_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore_weights(self, snapshot: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(snapshot)

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Writes the full training checkpoint (``ml_patterns.training``) atomically."""
        sampler = find_sampler(self._train_loader)
        save_training_checkpoint(
            path,
            write_model=self.model.save,
            optimizer_arrays=self._optimizer_arrays(),
            state={
                "backend": "torch",
                "epoch": self.epoch,
                "optimizer": {"name": self.optimizer_config.name, "step": self.optimizer.step_count},
                "sampler": sampler.state_dict() if sampler is not None else None,
                "callbacks": [callback.state_dict() for callback in self.callbacks],
                "history": self.history.state_dict(),
                # Dropout draws from torch's global generator: restoring it makes a resume bit-exact.
                "torch_rng_state": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
            },
        )

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restores model, optimizer, schedule, epoch, history, callbacks and (at the next ``fit``)
        the sampler from a checkpoint written by either backend."""
        model_file, optimizer_arrays, saved = load_training_checkpoint(path)
        self.model.load(model_file)
        self._load_optimizer_arrays(saved["optimizer"], optimizer_arrays, str(path))
        self.epoch = int(saved["epoch"])
        self.history.load_state_dict(saved["history"])
        load_callback_states(self.callbacks, saved["callbacks"], path)
        self._pending_sampler_state = saved["sampler"]
        if saved["backend"] == "torch" and "torch_rng_state" in saved:
            rng = np.frombuffer(base64.b64decode(saved["torch_rng_state"]), dtype=np.uint8)
            torch.set_rng_state(torch.from_numpy(rng.copy()))

    def _named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]

    def _optimizer_arrays(self) -> dict[str, np.ndarray]:
        """Optimizer slots as ``{"<slot>/<name>": array}``; zeros before the first step (torch
        creates its state lazily; zero moments are what optax starts from, and mean the same)."""
        arrays = {}
        for name, parameter in self._named_parameters():
            slots = self.optimizer.optimizer.state.get(parameter, {})
            for slot in OPTIMIZER_SLOTS[self.optimizer_config.name]:
                value = slots.get(slot)
                value = torch.zeros_like(parameter) if value is None else value
                arrays[f"{slot}/{name}"] = state.tensor_to_numpy(value).copy()
        return arrays

    def _load_optimizer_arrays(self, saved: dict, arrays: dict[str, np.ndarray], source: str) -> None:
        if saved["name"] != self.optimizer_config.name:
            raise ValueError(f"{source} was written with optimizer {saved['name']!r}, this trainer uses {self.optimizer_config.name!r}")
        named = self._named_parameters()
        slots = optimizer_arrays_to_slots(arrays)
        check_optimizer_state(saved["name"], slots, [name for name, _ in named], source)
        step = int(saved["step"])
        optimizer = self.optimizer.optimizer
        for name, parameter in named:
            entry = {slot: torch.from_numpy(slots[slot][name].copy()).to(parameter) for slot in slots}
            if saved["name"] != "sgd":
                entry["step"] = torch.tensor(float(step))  # torch keeps Adam's step per parameter
            optimizer.state[parameter] = entry
        self.optimizer.set_step(step)

    def _restore_sampler(self, loader: Iterable) -> None:
        if self._pending_sampler_state is not None:
            sampler = find_sampler(loader)
            if sampler is not None:
                sampler.load_state_dict(self._pending_sampler_state)
            self._pending_sampler_state = None


def train(
    model: torch.nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None,
    optimizer: OptimizerConfig,
    num_epochs: int,
    device: str | torch.device | None = None,
) -> dict[str, list[float]]:
    """Trains ``model`` for ``num_epochs``; returns ``{"train_loss": [...], "val_loss": [...]}``
    (per-epoch means weighted per molecule; ``val_loss`` empty without a ``val_loader``)."""
    history = Trainer(model, optimizer, device=device).fit(train_loader, val_loader, num_epochs)
    return {"train_loss": history["train_loss"], "val_loss": history.metrics.get("val_loss", [])}


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

