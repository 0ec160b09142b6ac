"""What both trainers share: the epoch-mean rule, batch preparation, and the full training checkpoint.

Epoch means. A loss reported for an epoch is ``sum_b n_b * loss_b / sum_b n_b`` over its batches,
with ``n_b`` the number of molecules in batch b and ``loss_b`` the batch's mean loss: every molecule
weighs the same, whatever batch it landed in (a short last batch does not count as a full one).
Both backends accumulate ``n_b * loss_b`` and ``n_b`` on the device and read them once per epoch.

Full training checkpoint: a directory, published atomically (``ml_patterns.io.staged_directory``)::

    PATH/model.safetensors      the model, in the portable format of ml_patterns.checkpoint
    PATH/optimizer.safetensors  optimizer slots in the canonical naming: "<slot>/<parameter name>",
                                slots exp_avg/exp_avg_sq (Adam family) or momentum_buffer (SGD),
                                arrays in the parameter's canonical (torch) layout
    PATH/trainer_state.json     next epoch, optimizer step, sampler state, callback states, history,
                                the backend that wrote it, format version

Either backend resumes from a checkpoint written by either backend: the canonical names and
layouts are the same on both sides.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml_patterns.molecules.batches import prepare_batch
from ml_patterns.callbacks import Callback
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.samplers import BatchSampler
from ml_patterns.history import History
from ml_patterns.io import atomic_write_bytes, atomic_write_text, staged_directory
from ml_patterns.loader import batch_rng
from ml_patterns.optim import OptimizerConfig

FORMAT = "ml-patterns-training-checkpoint/1"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"

# Optimizer slots per OptimizerConfig.name, in the canonical naming of both sides.
OPTIMIZER_SLOTS = {
    "sgd": ("momentum_buffer",),
    "adam": ("exp_avg", "exp_avg_sq"),
    "adam_l2": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
}

TRAIN_STREAM, EVAL_STREAM = 0, 1


class BatchPreparer:
    """Turns a collated batch into the model's batch (``ml_patterns.molecules.batches``), identically on both
    backends: the randomness of batch i of epoch e (token masking) is ``batch_rng`` of its position.

    Evaluation batches use their own stream and no epoch, so a validation loss is comparable across
    epochs. A model without a config (not one of the molecule models) gets the collated batch as is.
    """

    def __init__(self, config: ModelConfig | None):
        self.config = config

    def __call__(self, collated: Mapping, epoch: int, batch_index: int, *, train: bool) -> dict:
        if self.config is None:
            return dict(collated)
        numpy_batch = _as_numpy(collated)
        stream = TRAIN_STREAM if train else EVAL_STREAM
        rng = batch_rng(self.config.seed, epoch if train else 0, batch_index, stream=stream)
        return prepare_batch(numpy_batch, self.config, rng)


def _as_numpy(tree: Mapping) -> dict:
    # np.asarray reads a CPU torch tensor without copying and leaves numpy arrays as they are.
    return {k: _as_numpy(v) if isinstance(v, Mapping) else np.asarray(v) for k, v in tree.items()}


def epoch_mean(total: Any, count: int) -> float:
    """``total / count`` for a device scalar ``total`` (torch or JAX): the epoch's one host sync."""
    if count == 0:
        raise ValueError("the loader yielded no batch")
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
    """Hands each callback its saved state; the callbacks must be the ones the run was saved with."""
    if len(states) != len(callbacks):
        raise ValueError(f"{source} holds {len(states)} callback states, this trainer has {len(callbacks)} callbacks")
    for callback, state in zip(callbacks, states):
        callback.load_state_dict(state)


def batch_size_of(batch: Mapping) -> int:
    """Molecules in a model batch: the first dimension of its ``input_ids``."""
    return int(batch["input_ids"].shape[0])


def optimizer_arrays_to_slots(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """``{"exp_avg/w": a, ...}`` -> ``{"exp_avg": {"w": a}, ...}``."""
    slots: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        slot, _, name = key.partition("/")
        if not name:
            raise ValueError(f"optimizer array {key!r} is not named '<slot>/<parameter>'")
        slots.setdefault(slot, {})[name] = value
    return slots


def check_optimizer_state(name: str, slots: Mapping[str, Mapping], parameter_names: list[str], source: str) -> None:
    """Refuses a checkpoint whose optimizer slots do not fit ``name`` and the model's parameters."""
    expected = set(OPTIMIZER_SLOTS[name])
    if set(slots) - expected:
        raise ValueError(f"{source}: optimizer slots {sorted(slots)} do not belong to optimizer {name!r} (expects {sorted(expected)})")
    for slot, arrays in slots.items():
        missing = sorted(set(parameter_names) - set(arrays))
        unexpected = sorted(set(arrays) - set(parameter_names))
        if missing or unexpected:
            raise ValueError(f"{source}: optimizer slot {slot!r} missing {missing}, unexpected {unexpected}")


def save_training_checkpoint(
    path: str | os.PathLike,
    *,
    write_model: Callable[[Path], None],
    optimizer_arrays: Mapping[str, np.ndarray],
    state: dict,
) -> None:
    """Writes a full training checkpoint directory at ``path``, replacing any previous one atomically.

    A kill at any moment leaves either the previous checkpoint or the new one, never a mix: the new
    one is written into a hidden staging directory and renamed over the old one only when complete.
    """
    from safetensors.numpy import save

    with staged_directory(Path(path), overwrite=True) as staging:
        write_model(staging / MODEL_FILE)
        atomic_write_bytes(staging / OPTIMIZER_FILE, save({k: np.ascontiguousarray(v) for k, v in optimizer_arrays.items()}))
        atomic_write_text(staging / STATE_FILE, json.dumps({"format": FORMAT, **state}, indent=1) + "\n")


def load_training_checkpoint(path: str | os.PathLike) -> tuple[Path, dict[str, np.ndarray], dict[str, Any]]:
    """``(model file, optimizer arrays, trainer state)`` of a full checkpoint, checked for completeness."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"training checkpoint {path} does not exist (or is not a directory)")
    missing = [name for name in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE) if not (path / name).is_file()]
    if missing:
        raise ValueError(f"training checkpoint {path} is incomplete: {missing} missing")
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path / STATE_FILE} is not valid JSON: {error}") from None
    if state.get("format") != FORMAT:
        raise ValueError(f"{path / STATE_FILE}: format {state.get('format')!r}, expected {FORMAT!r}")
    try:
        optimizer_arrays = load_file(path / OPTIMIZER_FILE)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path / OPTIMIZER_FILE} is corrupt: {error}") from None
    return path / MODEL_FILE, optimizer_arrays, state


class TrainerBase:
    """The training loop, its hooks and its checkpoints, written once; a backend adds the arithmetic.

    The contract users see is documented on ``torch_impl.training``. A backend's ``Trainer``
    implements the methods below that raise ``NotImplementedError``: how a prepared batch reaches
    the device, one optimizer step, one evaluation step, and how its weights and optimizer state
    convert to and from the canonical arrays of a checkpoint.
    """

    backend: str

    def __init__(self, model: Any, optimizer: OptimizerConfig, callbacks: Sequence[Callback]):
        self.model = model
        self.optimizer_config = optimizer
        self.callbacks = list(callbacks)
        self.history = History()
        self.epoch = 0  # the next epoch to run
        self.should_stop = False
        self.stop_reason: str | None = None
        self.batches_per_epoch: int | None = None
        # Per epoch run by this trainer: {"epoch", "train_s", "val_s"} (each ends on a host sync).
        self.epoch_times: list[dict[str, float]] = []
        self._prepare = BatchPreparer(getattr(model, "config", None))
        self._train_loader: Any = None
        self._pending_sampler_state: dict | None = None

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, train_loader: Iterable, val_loader: Iterable | None = None, num_epochs: int = 1) -> History:
        self._train_loader = train_loader
        if self._pending_sampler_state is not None:
            sampler = find_sampler(train_loader)
            if sampler is not None:
                sampler.load_state_dict(self._pending_sampler_state)
            self._pending_sampler_state = None
        self.batches_per_epoch = len(train_loader) if hasattr(train_loader, "__len__") else None
        self.should_stop = False
        for callback in self.callbacks:
            callback.on_train_start(self)
        while self.epoch < num_epochs and not self.should_stop:
            epoch = self.epoch
            for callback in self.callbacks:
                callback.on_epoch_start(self, epoch)
            start = time.perf_counter()
            logs = {"train_loss": self._train_epoch(train_loader, epoch)}
            trained = time.perf_counter()
            if val_loader is not None:
                logs["val_loss"] = self.evaluate(val_loader)
            self.epoch_times.append({"epoch": epoch, "train_s": trained - start, "val_s": time.perf_counter() - trained})
            self.history.append(epoch, logs)
            self.epoch += 1  # before the callbacks: a checkpoint written now resumes at the next epoch
            self._after_epoch()
            for callback in self.callbacks:
                callback.on_epoch_end(self, epoch, logs)
        for callback in self.callbacks:
            callback.on_train_end(self)
        return self.history

    def _train_epoch(self, loader: Iterable, epoch: int) -> float:
        self._set_mode(train=True)
        total, count = 0.0, 0
        for index, collated in enumerate(loader):
            batch = self._to_batch(self._prepare(collated, epoch, index, train=True))
            loss = self._train_step(batch)
            n = batch_size_of(batch)
            total = total + loss * n  # stays on the device: no host sync inside the epoch
            count += n
            if self.callbacks:
                logs = {"loss": loss, "batch_size": n}
                for callback in self.callbacks:
                    callback.on_batch_end(self, index, logs)
        return epoch_mean(total, count)

    def evaluate(self, loader: Iterable) -> float:
        """The loss over ``loader``, weighted per molecule, dropout off."""
        self._set_mode(train=False)
        total, count = 0.0, 0
        for index, collated in enumerate(loader):
            batch = self._to_batch(self._prepare(collated, 0, index, train=False))
            n = batch_size_of(batch)
            total = total + self._eval_step(batch) * n
            count += n
        return epoch_mean(total, count)

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Writes the full training checkpoint (see this module's docstring) atomically."""
        sampler = find_sampler(self._train_loader)
        save_training_checkpoint(
            path,
            write_model=self._write_model,
            optimizer_arrays=self._optimizer_arrays(),
            state={
                "backend": self.backend,
                "epoch": self.epoch,
                "optimizer": {"name": self.optimizer_config.name, "step": self.optimizer_step},
                "sampler": sampler.state_dict() if sampler is not None else None,
                "callbacks": [callback.state_dict() for callback in self.callbacks],
                "history": self.history.state_dict(),
                **self._backend_state(),
            },
        )

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restores model, optimizer, schedule, epoch, history, callbacks and (at the next ``fit``)
        the sampler from a checkpoint written by either backend."""
        model_file, optimizer_arrays, saved = load_training_checkpoint(path)
        name = saved["optimizer"]["name"]
        if name != self.optimizer_config.name:
            raise ValueError(f"{path} was written with optimizer {name!r}, this trainer uses {self.optimizer_config.name!r}")
        slots = optimizer_arrays_to_slots(optimizer_arrays)
        check_optimizer_state(name, slots, self._parameter_names(), str(path))
        self._load_weights(model_file)
        self._load_optimizer(slots, int(saved["optimizer"]["step"]))
        self.epoch = int(saved["epoch"])
        self.history.load_state_dict(saved["history"])
        load_callback_states(self.callbacks, saved["callbacks"], path)
        self._pending_sampler_state = saved["sampler"]
        self._load_backend_state(saved)

    # -- what a backend provides ------------------------------------------------------------
    def _set_mode(self, train: bool) -> None:
        """Called before a training epoch (True) and before an evaluation (False)."""

    def _after_epoch(self) -> None:
        """Called after each epoch, before the callbacks see it."""

    def _to_batch(self, prepared: dict) -> Any:
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
        """``{"<slot>/<parameter name>": array}`` for the slots of ``OPTIMIZER_SLOTS``."""
        raise NotImplementedError

    def _load_optimizer(self, slots: dict[str, dict[str, np.ndarray]], step: int) -> None:
        raise NotImplementedError

    def _backend_state(self) -> dict:
        """Extra JSON entries of this backend's checkpoints."""
        return {}

    def _load_backend_state(self, saved: dict) -> None:
        """Reads back ``_backend_state``'s entries (from a checkpoint of either backend)."""
