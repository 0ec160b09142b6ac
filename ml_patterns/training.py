"""What both trainers share: the loop and its hooks, the epoch-mean rule, the full training checkpoint.

The loop (``TrainerBase.fit``) works for any model with ``compute_loss(batch) -> scalar`` and any
loader yielding batches that are mappings (or other pytrees) of arrays: nothing in it knows about
molecules. Per batch, in this order::

    batch = batch_transform(batch, epoch, batch_index, train=True)   # optional, on the host
    batch = <to the device>                                          # the backend's
    loss  = <one optimizer step on model.compute_loss(batch)>         # a device scalar
    callback.on_batch_end(batch_index, trainer, loss)                 # float(loss) is a host sync

A ``batch_transform`` is where a workload's batch preparation lives (the molecule models':
``ml_patterns.molecules.batches.BatchPreparer``, standardized labels and token masks drawn from
``batch_rng(seed, epoch, batch_index)``, so both backends and a resumed run see the same batch).
Evaluation batches get ``epoch=0, train=False``.

Epoch means. A loss reported for an epoch is ``sum_b n_b * loss_b / sum_b n_b`` over its batches,
with ``n_b`` the number of samples in batch b and ``loss_b`` the batch's mean loss: every sample
weighs the same, whatever batch it landed in (a short last batch does not count as a full one).
``n_b`` is the leading dimension of the batch's first array (mapping order; after the transform),
unless the loader or the model defines ``batch_size(batch) -> int`` (the loader's is asked first,
with the batch as the loader yielded it; the model's with the batch ``compute_loss`` receives, or,
where the step gets ``(rows, weight)`` with padding rows (data parallelism, JAX's
``pad_batches_to``), with the host batch before padding).
Both backends accumulate ``n_b * loss_b`` on the device and read it once per epoch.

Data parallelism (``distributed=``, docs/DISTRIBUTED.md). Every rank's loader yields the same GLOBAL
batch; the backend hands the step this rank's shard (``ml_patterns.distributed``) and the step
returns the GLOBAL batch loss, from sums and counts reduced across ranks (the model needs
``loss_sums(batch, weight)``). ``n_b`` is the global batch's, so epoch means equal one device's.
Callbacks run on every rank (the same metrics give the same decisions, e.g. early stopping); their
side effects, checkpoints and logs, happen on rank 0 only (``trainer.is_main``).

Non-finite losses. By default (``stop_on_non_finite=True``) training stops at the end of the first
epoch whose train or val loss is NaN or infinite, ``stop_reason`` saying so: the check reads the
epoch means already on the host, so it costs no extra sync.

Full training checkpoint: a directory, published atomically (``ml_patterns.io.staged_directory``;
written and read by ``ml_patterns.training_checkpoint``)::

    PATH/model.safetensors      the model, in the portable format of ml_patterns.checkpoint
    PATH/optimizer.safetensors  the optimizer's arrays (below)
    PATH/trainer_state.json     next epoch, optimizer step, sampler state, callback states, history,
                                the backend that wrote it, format version
    PATH/checksums.json         the sha256 of the three files above, verified before a load applies
                                anything (a load is all or nothing: ``TrainerBase.load_checkpoint``)

With an ``ml_patterns.optim.OptimizerConfig`` the optimizer's arrays are its slots in the canonical
naming, ``"<slot>/<parameter name>"`` (exp_avg/exp_avg_sq for the Adam family, momentum_buffer for
SGD) in the parameter's canonical (torch) layout, so either backend resumes a checkpoint written
by either. With a framework optimizer instance (a ``torch.optim.Optimizer``, an
``optax.GradientTransformation``) they are that framework's own state (torch: the tensors of
``optimizer.state_dict()``, its other entries in the JSON; optax: the leaves of the state pytree),
which only the same backend resumes: the other refuses, saying why.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ml_patterns.callbacks import Callback
from ml_patterns.distributed import check_loss_sums
from ml_patterns.fit_checks import check_fit
from ml_patterns.history import History
from ml_patterns.optim import OptimizerConfig
from ml_patterns.samplers import BatchSampler
from ml_patterns.training_checkpoint import (
    check_optimizer_state,
    load_training_checkpoint,
    optimizer_arrays_to_slots,
    save_training_checkpoint,
)

# A callback may define any of them (the seed's own Callback class has only the middle three).
HOOKS = ("on_train_start", "on_epoch_start", "on_batch_end", "on_epoch_end", "on_train_end")


class BatchTransform(Protocol):
    """``transform(batch, epoch, batch_index, *, train) -> batch``, run on the host before the
    batch goes to the device (evaluation batches: ``epoch=0, train=False``)."""

    def __call__(self, batch: Any, epoch: int, batch_index: int, *, train: bool) -> Any: ...


def leading_dimension(batch: Any) -> int:
    """The first dimension of the first array in ``batch`` (mappings in their order, then
    sequences): the default number of samples in a batch."""
    first = _first_array(batch)
    if first is None or not first.shape:
        raise ValueError(
            f"cannot tell how many samples a batch of type {type(batch).__name__} holds (no array with a leading "
            "dimension first); define batch_size(batch) -> int on the model or the loader"
        )
    return int(first.shape[0])


def _first_array(tree: Any) -> Any:
    if hasattr(tree, "shape"):
        return tree
    children = tree.values() if isinstance(tree, Mapping) else tree if isinstance(tree, (list, tuple)) else ()
    for child in children:
        found = _first_array(child)
        if found is not None:
            return found
    return None


def batch_size_hook(owner: Any) -> Callable[[Any], int] | None:
    """``owner.batch_size`` if it is a method (a torch ``DataLoader``'s ``batch_size`` is an int: not one)."""
    hook = getattr(owner, "batch_size", None)
    return hook if callable(hook) else None


def non_finite_reason(epoch: int, logs: Mapping[str, float]) -> str | None:
    """Why training must stop after this epoch's losses, or None while they are finite."""
    bad = {k: v for k, v in logs.items() if k in ("train_loss", "val_loss") and not math.isfinite(v)}
    if not bad:
        return None
    return f"stopped after epoch {epoch}: {', '.join(f'{k}={v}' for k, v in bad.items())} is not finite"


def epoch_mean(total: Any, count: int, what: str) -> float:
    """``total / count`` for a device scalar ``total`` (torch or JAX): the epoch's one host sync."""
    if count == 0:
        raise ValueError(f"the {what} loader yielded no batch")
    return float(total) / count


def find_sampler(loader: Any) -> BatchSampler | None:
    """The ``BatchSampler`` behind a torch ``DataLoader`` (``batch_sampler``) or a ``BatchLoader``
    (``sampler``), whose state a checkpoint keeps; None for other iterables."""
    for attribute in ("batch_sampler", "sampler"):
        sampler = getattr(loader, attribute, None)
        if isinstance(sampler, BatchSampler):
            return sampler
    return None


def load_callback_states(callbacks: Sequence, states: list[dict], source: str | os.PathLike) -> None:
    """Hands each callback its saved state; the callbacks must be the ones the run was saved with
    (a trainer without callbacks, e.g. to evaluate or fine-tune, takes none of them)."""
    if callbacks and len(states) != len(callbacks):
        raise ValueError(f"{source} holds {len(states)} callback states, this trainer has {len(callbacks)} callbacks")
    for callback, state in zip(callbacks, states):
        if hasattr(callback, "load_state_dict"):
            callback.load_state_dict(state)


class TrainerBase:
    """The training loop, its hooks and its checkpoints, written once; a backend adds the arithmetic.

    The contract users see is documented on ``torch_impl.training``. A backend's ``Trainer``
    implements the methods below that raise ``NotImplementedError``: how a batch reaches the
    device, one optimizer step, one evaluation step, and how its weights and optimizer state
    convert to and from the arrays of a checkpoint.

    ``weighted_rows``: the backend hands its steps ``(rows, weight)`` batches padded with weight-0
    rows and takes the loss from the model's ``loss_sums`` (always under data parallelism; JAX's
    ``pad_batches_to`` on one device), so the model must have ``loss_sums``.
    """

    backend: str

    def __init__(
        self,
        model: Any,
        optimizer_config: OptimizerConfig | None,
        callbacks: Sequence[Callback],
        *,
        batch_transform: BatchTransform | None = None,
        stop_on_non_finite: bool = True,
        distributed: Any = None,
        weighted_rows: bool = False,
    ):
        self.weighted_rows = weighted_rows or distributed is not None
        if distributed is not None:
            check_loss_sums(model)
        elif weighted_rows:
            check_loss_sums(model, "padding rows need, to leave them out of the loss (JAX's pad_batches_to)")
        self.model = model
        # A backend's distributed.Context (world_size, rank, is_main), or None on one device.
        self.distributed = distributed
        self.optimizer_config = optimizer_config  # None: a framework optimizer instance
        self.callbacks = list(callbacks)
        self.batch_transform = batch_transform
        self.stop_on_non_finite = stop_on_non_finite
        self.history = History()
        self.epoch = 0  # the next epoch to run
        self.should_stop = False
        self.stop_reason: str | None = None
        self.batches_per_epoch: int | None = None
        self.last_batch_size = 0  # samples in the batch just trained (what on_batch_end's loss averages)
        # Per epoch run by this trainer: {"epoch", "train_s", "val_s"} (each ends on a host sync).
        self.epoch_times: list[dict[str, float]] = []
        self._train_loader: Any = None
        self._pending_sampler_state: dict | None = None
        self._hooks: dict[str, list[Callable]] = {name: [] for name in HOOKS}  # the callbacks' bound hooks, per fit
        self._after_callbacks: list[Callable[[], None]] = []

    @property
    def is_main(self) -> bool:
        """Whether this process does the run's side effects: always on one device; under data
        parallelism rank 0 alone writes checkpoints and logs (``ml_patterns.distributed``)."""
        return self.distributed is None or self.distributed.is_main

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, train_loader: Iterable, val_loader: Iterable | None = None, num_epochs: int = 1) -> History:
        check_fit(num_epochs, self.epoch, self.callbacks, has_val_loader=val_loader is not None)
        self._check_loaders(train_loader, val_loader)
        self._train_loader = train_loader
        if self._pending_sampler_state is not None:
            sampler = find_sampler(train_loader)
            if sampler is not None:
                sampler.load_state_dict(self._pending_sampler_state)
            self._pending_sampler_state = None
        self.batches_per_epoch = len(train_loader) if hasattr(train_loader, "__len__") else None
        self.should_stop = False
        self._hooks = {name: [getattr(c, name) for c in self.callbacks if hasattr(c, name)] for name in HOOKS}
        for hook in self._hooks["on_train_start"]:
            hook(self)
        while self.epoch < num_epochs and not self.should_stop:
            epoch = self.epoch
            for hook in self._hooks["on_epoch_start"]:
                hook(epoch, self)
            start = time.perf_counter()
            metrics = {"train_loss": self._train_epoch(train_loader, epoch)}
            trained = time.perf_counter()
            if val_loader is not None:
                metrics["val_loss"] = self.evaluate(val_loader)
            validated = time.perf_counter()
            self.epoch_times.append({"epoch": epoch, "train_s": trained - start, "val_s": validated - trained})
            self.history.append(epoch, metrics)
            self.epoch += 1  # before the callbacks: a checkpoint written now resumes at the next epoch
            self._after_epoch()
            reason = non_finite_reason(epoch, metrics) if self.stop_on_non_finite else None
            if reason is not None:
                self.should_stop, self.stop_reason = True, reason
            for hook in self._hooks["on_epoch_end"]:
                hook(epoch, self, metrics)
            self._run_after_callbacks()
        for hook in self._hooks["on_train_end"]:
            hook(self)
        return self.history

    def after_callbacks(self, action: Callable[[], None]) -> None:
        """Runs ``action()`` once every callback has seen the current epoch (ModelCheckpoint's saves:
        a checkpoint then holds every callback's state after the epoch)."""
        self._after_callbacks.append(action)

    def _run_after_callbacks(self) -> None:
        actions, self._after_callbacks = self._after_callbacks, []
        for action in actions:
            action()

    def _batches(self, loader: Iterable, epoch: int, *, train: bool):
        """``(index, device batch, samples)`` per batch of ``loader``."""
        loader_size = batch_size_hook(loader)
        model_size = batch_size_hook(self.model)
        for index, raw in enumerate(loader):
            host = raw if self.batch_transform is None else self.batch_transform(raw, epoch, index, train=train)
            batch = self._to_batch(host)
            if loader_size is not None:
                n = int(loader_size(raw))
            elif model_size is not None:
                # A device batch of (rows, weight) holds padding (and under data parallelism is this
                # rank's shard): count the samples of the batch as the loader made it.
                n = int(model_size(host if self.weighted_rows else batch))
            else:
                n = leading_dimension(host)  # the host batch: its mapping order is the user's on both backends
            yield index, batch, n

    def _train_epoch(self, loader: Iterable, epoch: int) -> float:
        self._set_mode(train=True)
        total, count = 0.0, 0
        for index, batch, n in self._batches(loader, epoch, train=True):
            loss = self._train_step(batch)
            total = total + loss * n  # stays on the device: no host sync inside the epoch
            count += n
            self.last_batch_size = n
            for hook in self._hooks["on_batch_end"]:
                hook(index, self, loss)
        return epoch_mean(total, count, "training")

    def evaluate(self, loader: Iterable) -> float:
        """The loss over ``loader``, weighted per sample, dropout off."""
        self._set_mode(train=False)
        total, count = 0.0, 0
        for _, batch, n in self._batches(loader, 0, train=False):
            total = total + self._eval_step(batch) * n
            count += n
        return epoch_mean(total, count, "evaluation")

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Writes the full training checkpoint (see this module's docstring) atomically; under data
        parallelism only rank 0 writes (every rank holds the same weights and optimizer state)."""
        if not self.is_main:
            return
        sampler = find_sampler(self._train_loader)
        if self.optimizer_config is not None:
            optimizer = {"name": self.optimizer_config.name, "step": self.optimizer_step}
        else:
            optimizer = {"framework": self.backend, "step": self.optimizer_step, **self._framework_optimizer_json()}
        save_training_checkpoint(
            path,
            write_model=self._write_model,
            optimizer_arrays=self._optimizer_arrays(),
            state={
                "backend": self.backend,
                "epoch": self.epoch,
                "optimizer": optimizer,
                "sampler": sampler.state_dict() if sampler is not None else None,
                "callbacks": [c.state_dict() if hasattr(c, "state_dict") else {} for c in self.callbacks],
                "history": self.history.state_dict(),
                **self._backend_state(),
            },
        )

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restores model, optimizer, schedule, epoch, history, callbacks and (at the next ``fit``)
        the sampler. A checkpoint of an ``OptimizerConfig`` run resumes on either backend; one of a
        framework optimizer instance only on the backend that wrote it.

        All or nothing: every file is checked against its checksum and everything is read and
        checked (state types, optimizer, callbacks) before anything is applied; should applying
        fail all the same, the trainer is put back as it was, from a checkpoint of itself written
        first (the save/load path both backends resume from bit for bit). A failed load changes
        neither the weights, the optimizer, the epoch, the history nor the callbacks.
        """
        checkpoint = load_training_checkpoint(path)
        slots = self._check_checkpoint(path, *checkpoint)
        with tempfile.TemporaryDirectory(prefix="ml-patterns-undo-") as scratch:
            undo = Path(scratch) / "trainer"
            pending_sampler_state = self._pending_sampler_state
            self.save_checkpoint(undo)
            try:
                self._apply_checkpoint(path, *checkpoint, slots)
            except BaseException:
                before = load_training_checkpoint(undo)
                self._apply_checkpoint(undo, *before, self._check_checkpoint(undo, *before))
                self._pending_sampler_state = pending_sampler_state
                raise

    def _check_checkpoint(self, path, model_file: Path, optimizer_arrays: dict, saved: dict) -> dict | None:
        """Refuses a checkpoint this trainer cannot take, changing nothing; returns the optimizer slots
        of an ``OptimizerConfig`` checkpoint."""
        optimizer = saved["optimizer"]
        if self.callbacks and len(saved["callbacks"]) != len(self.callbacks):
            raise ValueError(
                f"{path} holds {len(saved['callbacks'])} callback states, this trainer has "
                f"{len(self.callbacks)} callbacks: resume with the callbacks the run was saved with"
            )
        if self.optimizer_config is not None:
            if "framework" in optimizer:
                raise ValueError(
                    f"{path} was written by a trainer with a {optimizer['framework']} optimizer instance "
                    f"({optimizer.get('class')}); this trainer uses OptimizerConfig({self.optimizer_config.name!r}). "
                    "Resume it with the same kind of optimizer"
                )
            name = optimizer["name"]
            if name != self.optimizer_config.name:
                raise ValueError(
                    f"{path} was written with optimizer {name!r}, this trainer uses {self.optimizer_config.name!r}"
                )
            slots = optimizer_arrays_to_slots(optimizer_arrays)
            check_optimizer_state(name, slots, self._parameter_names(), str(path))
            return slots
        if "framework" not in optimizer:
            raise ValueError(
                f"{path} was written with OptimizerConfig({optimizer['name']!r}); this trainer has a {self.backend} "
                "optimizer instance. Resume it with a trainer given that OptimizerConfig"
            )
        if optimizer["framework"] != self.backend:
            raise ValueError(
                f"{path} holds the state of a {optimizer['framework']} optimizer ({optimizer.get('class')}), which "
                f"only {optimizer['framework']} can read: {self.backend} optimizers keep other state in another "
                f"layout. Resume it with {optimizer['framework']}'s Trainer, or train with an "
                "ml_patterns.optim.OptimizerConfig, whose checkpoints both backends resume"
            )
        self._check_framework_optimizer(optimizer_arrays, optimizer, str(path))
        return None

    def _apply_checkpoint(
        self, path, model_file: Path, optimizer_arrays: dict, saved: dict, slots: dict | None
    ) -> None:
        self._load_weights(model_file)
        if slots is not None:
            self._load_optimizer(slots, saved["optimizer"]["step"])
        else:
            self._load_framework_optimizer(optimizer_arrays, saved["optimizer"], str(path))
        load_callback_states(self.callbacks, saved["callbacks"], path)
        self.epoch = saved["epoch"]
        self.history.load_state_dict(saved["history"])
        self._pending_sampler_state = saved["sampler"]
        self._load_backend_state(saved)

    # -- what a backend provides ------------------------------------------------------------
    def _set_mode(self, train: bool) -> None:
        """Called before a training epoch (True) and before an evaluation (False)."""

    def _after_epoch(self) -> None:
        """Called after each epoch, before the callbacks see it."""

    def _check_loaders(self, train_loader: Iterable, val_loader: Iterable | None) -> None:
        """Refuses loaders this backend cannot run before the first batch (ranks yielding unequal batch counts)."""

    def _to_batch(self, batch: Any) -> Any:
        raise NotImplementedError

    def _train_step(self, batch: Any) -> Any:
        """One optimizer step; returns the batch's mean loss as a device scalar (no host sync)."""
        raise NotImplementedError

    def _eval_step(self, batch: Any) -> Any:
        raise NotImplementedError

    @property
    def optimizer_step(self) -> int:
        raise NotImplementedError

    def _parameter_names(self) -> list[str]:
        """Canonical names of the trainable parameters."""
        raise NotImplementedError

    def _write_model(self, path: Path) -> None:
        raise NotImplementedError

    def _load_weights(self, model_file: Path) -> None:
        raise NotImplementedError

    def _optimizer_arrays(self) -> dict[str, np.ndarray]:
        """OptimizerConfig: ``{"<slot>/<parameter name>": array}`` for the slots of ``OPTIMIZER_SLOTS``;
        a framework optimizer: its own arrays, named as ``_load_framework_optimizer`` reads them."""
        raise NotImplementedError

    def _load_optimizer(self, slots: dict[str, dict[str, np.ndarray]], step: int) -> None:
        raise NotImplementedError

    def _framework_optimizer_json(self) -> dict:
        """The JSON part of a framework optimizer's state (``"class"`` at least)."""
        raise NotImplementedError

    def _check_framework_optimizer(self, arrays: dict[str, np.ndarray], saved: dict, source: str) -> None:
        """Refuses (ValueError naming ``source``) a framework optimizer state this trainer's optimizer cannot take."""
        raise NotImplementedError

    def _load_framework_optimizer(self, arrays: dict[str, np.ndarray], saved: dict, source: str) -> None:
        raise NotImplementedError

    def _backend_state(self) -> dict:
        """Extra JSON entries of this backend's checkpoints."""
        return {}

    def _load_backend_state(self, saved: dict) -> None:
        """Reads back ``_backend_state``'s entries (from a checkpoint of either backend)."""
