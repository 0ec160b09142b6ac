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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml_patterns.batches import prepare_batch
from ml_patterns.config import ModelConfig
from ml_patterns.data import BatchSampler
from ml_patterns.io import atomic_write_bytes, atomic_write_text, staged_directory
from ml_patterns.loader import batch_rng

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
    """Turns a collated batch into the model's batch (``ml_patterns.batches``), identically on both
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
