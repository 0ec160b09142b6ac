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
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from ml_patterns.callbacks import Callback
from ml_patterns.optim import OptimizerConfig
from ml_patterns.training import OPTIMIZER_SLOTS, TrainerBase
from torch_impl import state
from torch_impl.models import as_batch
from torch_impl.optim import build_optimizer


class Trainer(TrainerBase):
    """See the module docstring for the contract; the loop itself is ``ml_patterns.training.TrainerBase``."""

    backend = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: OptimizerConfig,
        callbacks: Sequence[Callback] = (),
        *,
        device: str | torch.device | None = None,
    ):
        self.device = torch.device(device) if device is not None else _default_device()
        super().__init__(model.to(self.device), optimizer, callbacks)
        self.optimizer = build_optimizer(optimizer, self.model.parameters())

    def _set_mode(self, train: bool) -> None:
        self.model.train(train)

    def _to_batch(self, prepared: dict) -> dict:
        return as_batch(prepared, self.device)

    def _train_step(self, batch: dict) -> torch.Tensor:
        self.optimizer.zero_grad()
        loss = self.model.compute_loss(batch)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def _eval_step(self, batch: dict) -> torch.Tensor:
        return self.model.compute_loss(batch)

    # -- what callbacks use -----------------------------------------------------------------
    def snapshot_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore_weights(self, snapshot: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(snapshot)

    # -- checkpoints: conversions to and from the canonical arrays --------------------------
    @property
    def optimizer_step(self) -> int:
        return self.optimizer.step_count

    def _named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]

    def _parameter_names(self) -> list[str]:
        return [name for name, _ in self._named_parameters()]

    def _write_model(self, path: Path) -> None:
        self.model.save(path)

    def _load_weights(self, model_file: Path) -> None:
        self.model.load(model_file)

    def _optimizer_arrays(self) -> dict[str, np.ndarray]:
        """Zeros before the first step: torch creates its state lazily; zero moments are what optax
        starts from, and mean the same."""
        arrays = {}
        for name, parameter in self._named_parameters():
            slots = self.optimizer.optimizer.state.get(parameter, {})
            for slot in OPTIMIZER_SLOTS[self.optimizer_config.name]:
                value = slots.get(slot)
                value = torch.zeros_like(parameter) if value is None else value
                arrays[f"{slot}/{name}"] = state.tensor_to_numpy(value).copy()
        return arrays

    def _load_optimizer(self, slots: dict[str, dict[str, np.ndarray]], step: int) -> None:
        optimizer = self.optimizer.optimizer
        for name, parameter in self._named_parameters():
            entry = {slot: torch.from_numpy(slots[slot][name].copy()).to(parameter) for slot in slots}
            if self.optimizer_config.name != "sgd":
                entry["step"] = torch.tensor(float(step))  # torch keeps Adam's step per parameter
            optimizer.state[parameter] = entry
        self.optimizer.set_step(step)

    def _backend_state(self) -> dict:
        # Dropout draws from torch's global generator: restoring it makes a resume bit-exact.
        return {"torch_rng_state": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}

    def _load_backend_state(self, saved: dict) -> None:
        if "torch_rng_state" in saved:
            rng = np.frombuffer(base64.b64decode(saved["torch_rng_state"]), dtype=np.uint8)
            torch.set_rng_state(torch.from_numpy(rng.copy()))


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
