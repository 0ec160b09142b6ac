"""What both trainers share: the loop and its hooks, the epoch-mean rule, the full training checkpoint.

The loop (``TrainerBase.fit``) works for any model with ``compute_loss(batch) -> scalar`` and any
loader yielding batches that are mappings (or other pytrees) of arrays: nothing in it knows about
molecules. Per batch, in this order::

    batch = batch_transform(batch, epoch, batch_index, train=True)   # optional, on the host
    batch = <to the device>                                          # the backend's, queued one batch ahead
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
where the step gets ``(rows, weight)`` with padding rows (data parallelism,
``pad_batches_to``), with the host batch before padding).
Both backends keep each batch's loss on the device and read the epoch's in one go at its end (JAX: one explicit
transfer), adding ``n_b * loss_b`` in float32 in batch order.

Gradient accumulation (``accumulate_steps=k``). The loop groups k consecutive batches (the
epoch's last group takes the batches left) and the backend makes one optimizer update of the group
(``_accumulate_step``) on ``sum_b n_b * grad(loss_b) / sum_b n_b``: the gradient of one batch
holding the group's samples, each sample weighing the same. Hooks see the group as that batch:
``on_batch_end`` once per update with the group's per-sample mean loss, ``last_batch_size`` its
samples, ``batches_per_epoch`` the updates per epoch; epoch means are unchanged.

Data parallelism (``distributed=``, docs/DISTRIBUTED.md). Every rank's loader yields the same GLOBAL
batch; the backend hands the step this rank's shard (``ml_patterns.distributed``) and the step
returns the GLOBAL batch loss, from sums and counts reduced across ranks (the model needs
``loss_sums(batch, weight)``). ``n_b`` is the global batch's, so epoch means equal one device's.
Callbacks run on every rank (the same metrics give the same decisions, e.g. early stopping); their
side effects, checkpoints and logs, happen on rank 0 only (``trainer.is_main``).

Non-finite losses. By default (``stop_on_non_finite=True``) training stops at the end of the first
epoch whose train or val loss is NaN or infinite, ``stop_reason`` saying so: the check reads the
epoch means already on the host, so it costs no extra sync.

Full training checkpoints (``save_checkpoint``, ``load_checkpoint``): ``ml_patterns.training_resume``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from ml_patterns.callbacks import Callback
from ml_patterns.distributed import check_loss_sums, shard_rows
from ml_patterns.fit_checks import check_fit
from ml_patterns.history import History
from ml_patterns.optim import OptimizerConfig
from ml_patterns.precision import check_precision
from ml_patterns.training_resume import ResumableTrainer, find_sampler

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


def check_accumulate_steps(accumulate_steps: int, distributed: Any) -> int:
    """``accumulate_steps`` if it is a positive int; refused with data parallelism (not supported)."""
    if isinstance(accumulate_steps, bool) or not isinstance(accumulate_steps, int) or accumulate_steps < 1:
        raise ValueError(f"accumulate_steps must be a positive int (batches per update), got {accumulate_steps!r}")
    if accumulate_steps > 1 and distributed:
        raise ValueError(
            "accumulate_steps > 1 with distributed is not supported: raise the global batch size instead "
            "(every rank's loader yields the global batch)"
        )
    return accumulate_steps


_PAD_TO = "set pad_batches_to to the largest batch size of the loaders given to fit and evaluate"


class TrainerBase(ResumableTrainer):
    """The training loop, its hooks and its checkpoints, written once; a backend adds the arithmetic.

    The contract users see is documented on ``torch_impl.training``. A backend's ``Trainer``
    implements the methods below that raise ``NotImplementedError``: how a batch reaches the
    device, one optimizer step, one evaluation step, and how its weights and optimizer state
    convert to and from the arrays of a checkpoint.

    ``pad_batches_to``: rows every batch is padded to (the loader's batch size; under data
    parallelism, the global batch's, each device computing ``ceil(N / devices)``), with weight-0
    repeats of its first sample, so that every batch has one shape: a backend that compiles a
    program per shape (JAX) runs the short last batch with the full batches' program. A loader
    whose batches may be larger is refused before training. None (default): batches run as they come.

    ``precision``: one of ``ml_patterns.precision.TRAINING_PRECISIONS`` (``"float32"``, ``"tf32"``,
    ``"bf16-mixed"``); the weights, optimizer state and checkpoints stay float32 under every one,
    so a checkpoint resumes under any precision (docs/PRECISION.md).

    ``weighted_rows`` (``pad_batches_to`` or data parallelism): the backend hands its steps
    ``(rows, weight)`` batches and takes the loss from the model's ``loss_sums(batch, weight)``, the
    global mean over the real rows (``ml_patterns.distributed.global_mean``), so the model must
    have ``loss_sums``. The losses, gradients and epoch means are those of the real rows alone, up
    to the order of sums, with one difference: a loss part whose count is 0 adds 0 where a model's
    own ``compute_loss`` might give NaN. Padding rows do go through the forward pass: a layer that
    mixes rows (batch normalization's statistics) would see them.
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
        pad_batches_to: int | None = None,
        precision: str = "float32",
        accumulate_steps: int = 1,
    ):
        self.precision = check_precision(precision)
        self.accumulate_steps = check_accumulate_steps(accumulate_steps, distributed)
        if pad_batches_to is not None and (
            isinstance(pad_batches_to, bool) or not isinstance(pad_batches_to, int) or pad_batches_to < 1
        ):
            raise ValueError(f"pad_batches_to must be a positive int (the batch size) or None, got {pad_batches_to!r}")
        self.pad_batches_to = pad_batches_to
        self.weighted_rows = pad_batches_to is not None or distributed is not None
        if distributed is not None:
            check_loss_sums(model)
        elif pad_batches_to is not None:
            check_loss_sums(model, "padding rows need, to leave them out of the loss (pad_batches_to)")
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
        # Refused before the first step, not at the first large batch (validation's: an epoch later).
        self._check_padding(train_loader, "train")
        if val_loader is not None:
            self._check_padding(val_loader, "val")
        self._train_loader = train_loader
        if self._pending_sampler_state is not None:
            sampler = find_sampler(train_loader)
            if sampler is not None:
                sampler.load_state_dict(self._pending_sampler_state)
            self._pending_sampler_state = None
        # Optimizer updates per epoch (what on_batch_end counts): one per group of accumulate_steps batches.
        self.batches_per_epoch = (
            -(-len(train_loader) // self.accumulate_steps) if hasattr(train_loader, "__len__") else None
        )
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
            # Metrics a callback logged in earlier epochs are NaN until it logs them again (below).
            self.history.append(epoch, {**dict.fromkeys(self.history.metrics.keys() - {"epoch"}, math.nan), **metrics})
            self.epoch += 1  # before the callbacks: a checkpoint written now resumes at the next epoch
            self._after_epoch()
            reason = non_finite_reason(epoch, metrics) if self.stop_on_non_finite else None
            if reason is not None:
                self.should_stop, self.stop_reason = True, reason
            for hook in self._hooks["on_epoch_end"]:
                hook(epoch, self, metrics)
                self.history.update_last(metrics)  # what the callback added (val_acc) or changed
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
        """``(index, device batch, samples)`` per batch of ``loader``, each sent to the device one
        batch ahead: batch i+1 is transformed and its copy queued before step i is, so on an
        accelerator the copy and the host's work overlap the step instead of waiting for it."""
        loader_size = batch_size_hook(loader)
        model_size = batch_size_hook(self.model)
        ahead = None
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
            if ahead is not None:
                yield ahead
            ahead = index, batch, n
        if ahead is not None:
            yield ahead

    def _train_epoch(self, loader: Iterable, epoch: int) -> float:
        self._set_mode(train=True)
        losses, counts = [], []
        for index, batches, sizes in self._updates(loader, epoch):
            if self.accumulate_steps == 1:
                loss = self._train_step(batches[0])
            else:
                loss = self._accumulate_step(batches, sizes)
            n = sum(sizes)
            losses.append(loss)  # stays on the device: no host sync inside the epoch
            counts.append(n)
            self.last_batch_size = n
            for hook in self._hooks["on_batch_end"]:
                hook(index, self, loss)
        return epoch_mean(self._epoch_total(losses, counts), sum(counts), "training")

    def _updates(self, loader: Iterable, epoch: int):
        """``(update index, device batches, their samples)`` per optimizer update: groups of
        ``accumulate_steps`` consecutive batches, the epoch's last group taking the batches left."""
        batches, sizes = [], []
        update = 0
        for _, batch, n in self._batches(loader, epoch, train=True):
            batches.append(batch)
            sizes.append(n)
            if len(batches) == self.accumulate_steps:
                yield update, batches, sizes
                batches, sizes, update = [], [], update + 1
        if batches:
            yield update, batches, sizes

    def evaluate(self, loader: Iterable) -> float:
        """The loss over ``loader``, weighted per sample, dropout off."""
        self._check_padding(loader, "evaluation")
        self._set_mode(train=False)
        losses, counts = [], []
        for _, batch, n in self._batches(loader, 0, train=False):
            losses.append(self._eval_step(batch))
            counts.append(n)
        return epoch_mean(self._epoch_total(losses, counts), sum(counts), "evaluation")

    # -- padding ----------------------------------------------------------------------------
    def _check_padding(self, loader: Iterable, what: str) -> None:
        """Refuses a loader whose sampler yields batches larger than ``pad_batches_to`` (other
        loaders are checked batch by batch, in ``rows_per_device``)."""
        sampler = find_sampler(loader)
        if self.pad_batches_to is not None and sampler is not None and sampler.batch_size > self.pad_batches_to:
            raise ValueError(
                f"the {what} loader's batches hold up to {sampler.batch_size} samples, more than "
                f"pad_batches_to={self.pad_batches_to}: {_PAD_TO}"
            )

    def rows_per_device(self, n: int, world_size: int) -> int | None:
        """Rows each device computes for a batch of ``n`` samples: ``pad_batches_to``'s share, or
        None (the fewest, ``ceil(n / world_size)``) without it."""
        if self.pad_batches_to is None:
            return None
        if n > self.pad_batches_to:
            raise ValueError(f"a batch of {n} rows is larger than pad_batches_to={self.pad_batches_to}: {_PAD_TO}")
        return shard_rows(self.pad_batches_to, world_size)

    # -- what a backend provides ------------------------------------------------------------
    def _set_mode(self, train: bool) -> None:
        """Called before a training epoch (True) and before an evaluation (False)."""

    def _after_epoch(self) -> None:
        """Called after each epoch, before the callbacks see it."""

    def _check_loaders(self, train_loader: Iterable, val_loader: Iterable | None) -> None:
        """Refuses loaders this backend cannot run before the first batch (ranks yielding unequal batch counts)."""

    def _to_batch(self, batch: Any) -> Any:
        """``batch`` queued for the device (the copy may still run: the step waits for it, not the host)."""
        raise NotImplementedError

    def _epoch_total(self, losses: list, counts: list[int]) -> Any:
        """``sum_b n_b * loss_b`` of an epoch's device scalars, in batch order: added up on the
        device, read by ``epoch_mean`` (the epoch's one sync)."""
        total = 0.0
        for loss, n in zip(losses, counts):
            total = total + loss * n
        return total

    def _train_step(self, batch: Any) -> Any:
        """One optimizer step; returns the batch's mean loss as a device scalar (no host sync)."""
        raise NotImplementedError

    def _accumulate_step(self, batches: list, counts: list[int]) -> Any:
        """One optimizer step on the gradient of the group's per-sample mean loss,
        ``sum_b n_b * grad(loss_b) / sum_b n_b`` (clipping and the update once); returns that mean
        loss, ``sum_b n_b * loss_b / sum_b n_b``, as a device scalar."""
        raise NotImplementedError

    def _eval_step(self, batch: Any) -> Any:
        raise NotImplementedError
