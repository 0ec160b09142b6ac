"""Training loop and Trainer, torch side: imperative zero_grad / backward / step.

The contract, documented here once (``jax_impl.training`` mirrors it name for name):

- ``Trainer(model, optimizer, callbacks=(), *, device=None, batch_transform=None,
  stop_on_non_finite=True, distributed=None, pad_batches_to=None, precision="float32",
  accumulate_steps=1, scheduler=None, scheduler_interval="epoch")``: ``model`` is any
  ``nn.Module`` with ``compute_loss(batch) -> scalar tensor``; ``optimizer`` a
  ``torch.optim.Optimizer`` over the model's parameters, or an ``ml_patterns.optim.OptimizerConfig``
  (built here; its checkpoints resume on either backend).
  ``fit(train_loader, val_loader=None, num_epochs=1)`` runs epochs ``trainer.epoch`` ..
  ``num_epochs - 1`` (``num_epochs`` is the total, so a resumed trainer continues where it stopped)
  and returns the ``History``: ``train_loss`` and ``val_loss`` per epoch, weighted per sample.
- Loaders yield batches: a mapping (or list/tuple) of numpy arrays or tensors, moved to ``device``
  (numpy integers become int64, torch's integer default). ``batch_transform``, samples per batch,
  the non-finite stop and the checkpoint format: ``ml_patterns.training``.
- ``distributed``: a ``torch_impl.distributed.Context`` (or True: ``setup()`` from torchrun's
  environment) trains data-parallel with DDP: each rank's loader yields the same global batch, the
  step takes this rank's shard, the model needs ``loss_sums(batch, weight)``; rank 0 alone writes
  (docs/DISTRIBUTED.md). ``device`` is then the rank's own.
- ``pad_batches_to``: every batch padded to that many rows, the loss from the model's
  ``loss_sums(batch, weight)`` over the real rows (``ml_patterns.training.TrainerBase``).
- No host sync inside an epoch: losses accumulate on the device and are read once per epoch. A
  callback's ``float(loss)`` in ``on_batch_end`` is a sync (ProgressBar does it at most twice a second).
- Hooks and callbacks: ``ml_patterns.callbacks``. ``save_checkpoint(path)`` writes the full training
  checkpoint; ``load_checkpoint(path)`` restores one, and the next ``fit`` resumes from it.
- ``precision``: ``"float32"`` (default), ``"tf32"`` or ``"bf16-mixed"`` (``ml_patterns.precision``):
  the step runs under its float32 matmul policy, and for ``bf16-mixed`` the forward pass and loss
  under ``torch.autocast(device.type, dtype=torch.bfloat16)`` (``torch_impl.precision``); the
  parameters, gradients, optimizer state and checkpoints stay float32, the losses reported are float32.
- ``accumulate_steps=k``: every k batches make one update on their sample-weighted gradient
  (``ml_patterns.training``); here each micro-batch's ``loss * n_b / N`` is back-propagated into
  ``.grad``, then clipping and ``optimizer.step()`` run once.
- ``scheduler``: a ``torch.optim.lr_scheduler`` scheduler over ``optimizer`` (a ``torch.optim``
  one; an ``OptimizerConfig`` has its ``ScheduleConfig``), stepped after every epoch
  (``scheduler_interval="epoch"``; ``ReduceLROnPlateau`` with the epoch's ``val_loss``, else
  ``train_loss``) or after every optimizer update (``"step"``), and saved with the optimizer's state
  in checkpoints (``torch_impl.training_state``): a resume is bit-exact. The JAX side's schedules
  are optax's, inside the transformation (docs/API.md maps one onto the other).
- ``train(model, train_loader, val_loader, optimizer, num_epochs, device=None, *,
  batch_transform=None, precision="float32", accumulate_steps=1)``: the seed's function, returning
  ``{"train_loss": [...], "val_loss": [...]}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml_patterns import checkpoint
from ml_patterns.callbacks import Callback
from ml_patterns.distributed import global_mean, rank_rows
from ml_patterns.optim import OptimizerConfig
from ml_patterns.precision import matmul_policy
from ml_patterns.training import BatchTransform, TrainerBase, leading_dimension
from torch_impl import distributed as distributed_
from torch_impl import state
from torch_impl.optim import build_optimizer
from torch_impl.precision import autocast, precision_policy
from torch_impl.training_state import OptimizerCheckpoint, check_scheduler, step_epoch_scheduler


class Trainer(OptimizerCheckpoint, TrainerBase):
    """See the module docstring for the contract; the loop itself is ``ml_patterns.training.TrainerBase``."""

    backend = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: OptimizerConfig | torch.optim.Optimizer,
        callbacks: Sequence[Callback] = (),
        *,
        device: str | torch.device | None = None,
        batch_transform: BatchTransform | None = None,
        stop_on_non_finite: bool = True,
        distributed: distributed_.Context | bool | None = None,
        pad_batches_to: int | None = None,
        precision: str = "float32",
        accumulate_steps: int = 1,
        scheduler: Any = None,
        scheduler_interval: str = "epoch",
    ):
        if distributed is True:
            distributed = distributed_.setup()
        if distributed:
            if device is not None and torch.device(device) != distributed.device:
                raise ValueError(f"device={device} but this rank's device is {distributed.device}: leave device out")
            device = distributed.device
        self.device = torch.device(device) if device is not None else _default_device()
        if isinstance(optimizer, OptimizerConfig):
            config = optimizer
        elif isinstance(optimizer, torch.optim.Optimizer):
            config = None
        else:
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer or an OptimizerConfig, got {type(optimizer).__name__}"
            )
        # .to() moves parameters in place: an optimizer built over them before keeps pointing at them.
        super().__init__(
            model.to(self.device),
            config,
            callbacks,
            batch_transform=batch_transform,
            stop_on_non_finite=stop_on_non_finite,
            distributed=distributed or None,
            pad_batches_to=pad_batches_to,
            precision=precision,
            accumulate_steps=accumulate_steps,
        )
        if config is None:
            state.check_optimizer_parameters(optimizer, self.model)
        self.scheduler = check_scheduler(scheduler, scheduler_interval, optimizer)
        self.scheduler_interval = scheduler_interval
        self._matmul_policy = matmul_policy(self.precision)
        self.optimizer = optimizer if config is None else build_optimizer(config, self.model.parameters())
        if self.distributed is not None:  # DDP wraps the model here, broadcasting rank 0's weights
            self._parallel_train = distributed_.make_train_step(self.model, self.optimizer, self.distributed)
            self._parallel_eval = distributed_.make_eval_step(self.model)
        self._steps = 0  # a framework optimizer's updates (our Optimizer counts its own)
        # On a GPU, batches are copied on a stream of their own, so that the copy of the next batch
        # (queued one batch ahead by the loop) runs while the current step computes; each copy's
        # event, by the id of its batch, is what the step waits for.
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._copies: dict[int, torch.cuda.Event] = {}

    def _set_mode(self, train: bool) -> None:
        self.model.train(train)
        self._copies.clear()  # copies of a loop that stopped early (an exception) are never waited for

    def _check_loaders(self, train_loader, val_loader) -> None:
        if self.distributed is not None:
            distributed_.check_batch_counts({"training": train_loader, "validation": val_loader}, self.distributed)

    def _to_batch(self, batch: Any) -> Any:
        if self._copy_stream is None:
            return self._device_batch(batch)
        with torch.cuda.stream(self._copy_stream):
            moved = self._device_batch(batch)
            done = torch.cuda.Event()
            done.record(self._copy_stream)
        self._copies[id(moved)] = done
        return moved

    def _device_batch(self, batch: Any) -> Any:
        if not self.weighted_rows:
            return to_device(batch, self.device)
        world, rank = (1, 0) if self.distributed is None else (self.distributed.world_size, self.distributed.rank)
        n = leading_dimension(batch)
        rows, weight = rank_rows(batch, n, world, rank, self.rows_per_device(n, world))
        return to_device(rows, self.device), to_device(weight, self.device)

    def _ready(self, batch: Any) -> Any:
        """``batch`` once the current stream has waited for its copy (a device-side wait: the host
        goes on), its memory marked as used by that stream so the allocator does not reuse it early."""
        done = self._copies.pop(id(batch), None)
        if done is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            for tensor in _tensors(batch):
                tensor.record_stream(stream)
        return batch

    def _loss(self, batch: Any) -> torch.Tensor:
        """One device's loss: ``compute_loss``, or of ``(rows, weight)`` the real rows' global mean."""
        if not self.weighted_rows:
            return self.model.compute_loss(batch)
        return global_mean(self.model.loss_sums(*batch), distributed_.safe_divide)

    def _train_step(self, batch: Any) -> torch.Tensor:
        batch = self._ready(batch)
        with precision_policy(self._matmul_policy):
            if self.distributed is not None:
                with self._autocast():  # DDP's step is forward and backward in one call
                    loss = self._parallel_train(*batch)  # the global batch's loss
            else:
                self.optimizer.zero_grad()
                with self._autocast():
                    loss = self._loss(batch)
                loss.backward()
                self.optimizer.step()
                loss = loss.detach()
        self._stepped()
        return loss.float()  # a no-op in float32; a bfloat16 loss would round the epoch's sums

    def _accumulate_step(self, batches: list, counts: list[int]) -> torch.Tensor:
        # Each micro-batch's loss scaled by n_b / N before its backward: the gradients add up in
        # .grad to the gradient of the group's per-sample mean; clipping and the step see the sum.
        total = sum(counts)
        self.optimizer.zero_grad()
        group_loss = torch.zeros((), device=self.device)
        with precision_policy(self._matmul_policy):
            for batch, n in zip(batches, counts):
                batch = self._ready(batch)
                with self._autocast():
                    loss = self._loss(batch).float()
                weight = n / total
                (loss * weight).backward()
                group_loss = group_loss + loss.detach() * weight
            self.optimizer.step()
        self._stepped()
        return group_loss

    def _stepped(self) -> None:
        """After every optimizer update: counted, and a per-step scheduler stepped."""
        self._steps += 1
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()

    def _after_epoch(self) -> None:
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            step_epoch_scheduler(self.scheduler, self.history)

    @torch.no_grad()
    def _eval_step(self, batch: Any) -> torch.Tensor:
        batch = self._ready(batch)
        with precision_policy(self._matmul_policy), self._autocast():
            loss = self._loss(batch) if self.distributed is None else self._parallel_eval(*batch)
        return loss.float()

    def _autocast(self) -> torch.autocast:
        return autocast(self.precision, self.device)

    def compilations(self) -> int | None:
        """Programs compiled for this trainer's steps so far; None: eager torch compiles nothing
        (``jax_impl.training.Trainer.compilations`` counts JAX's, one per batch shape)."""
        return None

    # -- what callbacks use -----------------------------------------------------------------
    def snapshot_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore_weights(self, snapshot: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(snapshot)

    # -- checkpoints: conversions to and from the arrays of a checkpoint --------------------
    @property
    def optimizer_step(self) -> int:
        return self._steps if self.optimizer_config is None else self.optimizer.step_count

    def _named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]

    def _parameter_names(self) -> list[str]:
        return [name for name, _ in self._named_parameters()]

    def _write_model(self, path: Path) -> None:
        checkpoint.save_checkpoint(
            path,
            state.to_numpy(self.model),
            backend="torch",
            model_class=type(self.model).__name__,
            config=getattr(self.model, "config", None),
            versions={"torch": torch.__version__},
        )

    def _load_weights(self, model_file: Path) -> None:
        arrays, _ = checkpoint.load_checkpoint(model_file)
        state.from_numpy(self.model, arrays, source=str(model_file))


def to_device(batch: Any, device: torch.device | str | None = None) -> Any:
    """``batch`` with every array on ``device`` (None: torch's default device): tensors moved, numpy
    arrays converted (integers to int64, torch's integer default), mappings, lists and tuples walked;
    anything else kept. To a GPU, host arrays go through pinned memory and are copied
    ``non_blocking``: the copy is queued on the current stream and the host does not wait for it."""
    if device is None:
        device = torch.get_default_device()
    device = torch.device(device)
    if torch.is_tensor(batch):
        if device.type == "cuda" and batch.device.type == "cpu":
            return batch.pin_memory().to(device, non_blocking=True)
        return batch.to(device)
    if isinstance(batch, np.ndarray):
        dtype = torch.int64 if np.issubdtype(batch.dtype, np.integer) else None
        return to_device(torch.as_tensor(batch, dtype=dtype), device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _tensors(tree: Any) -> Iterator[torch.Tensor]:
    if torch.is_tensor(tree):
        yield tree
    elif isinstance(tree, (Mapping, list, tuple)):
        for child in tree.values() if isinstance(tree, Mapping) else tree:
            yield from _tensors(child)


def train(
    model: torch.nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None,
    optimizer: OptimizerConfig | torch.optim.Optimizer,
    num_epochs: int,
    device: str | torch.device | None = None,
    *,
    batch_transform: BatchTransform | None = None,
    precision: str = "float32",
    accumulate_steps: int = 1,
) -> dict[str, list[float]]:
    """Trains ``model`` for ``num_epochs``; returns ``{"train_loss": [...], "val_loss": [...]}``
    (per-epoch means weighted per sample; ``val_loss`` empty without a ``val_loader``).
    ``precision``, ``accumulate_steps``: see ``Trainer``."""
    options = dict(batch_transform=batch_transform, precision=precision, accumulate_steps=accumulate_steps)
    trainer = Trainer(model, optimizer, device=device, **options)
    history = trainer.fit(train_loader, val_loader, num_epochs)
    return {"train_loss": history["train_loss"], "val_loss": history.metrics.get("val_loss", [])}


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
