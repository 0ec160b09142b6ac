"""Full training checkpoints of a trainer: ``save_checkpoint`` and ``load_checkpoint``, written once
for both backends (``ml_patterns.training.TrainerBase`` inherits them), and the conversions a backend
provides for them.

Full training checkpoint: a directory, published atomically (``ml_patterns.io.staged_directory``;
written and read by ``ml_patterns.training_checkpoint``)::

    PATH/model.safetensors      the model, in the portable format of ml_patterns.checkpoint
    PATH/optimizer.safetensors  the optimizer's arrays (below)
    PATH/trainer_state.json     next epoch, optimizer step, sampler state, the stateful callbacks'
                                states by key (``callback_keys``), history,
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

import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml_patterns.checkpoint import CheckpointError
from ml_patterns.samplers import BatchSampler
from ml_patterns.training_checkpoint import (
    check_optimizer_state,
    load_training_checkpoint,
    optimizer_arrays_to_slots,
    save_training_checkpoint,
)


def find_sampler(loader: Any) -> BatchSampler | None:
    """The ``BatchSampler`` behind a torch ``DataLoader`` (``batch_sampler``) or a ``BatchLoader``
    (``sampler``), whose state a checkpoint keeps; None for other iterables."""
    for attribute in ("batch_sampler", "sampler"):
        sampler = getattr(loader, attribute, None)
        if isinstance(sampler, BatchSampler):
            return sampler
    return None


def callback_keys(callbacks: Sequence) -> list[str]:
    """The key each callback's state is saved under: its ``state_key`` attribute if it has one (a
    callback that may appear twice with different roles names them), else its class name; the
    second, third... callback of one key get ``#2``, ``#3`` (in the order of the list)."""
    keys, seen = [], Counter()
    for callback in callbacks:
        key = getattr(callback, "state_key", None) or type(callback).__name__
        seen[key] += 1
        keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return keys


def stateful_callbacks(callbacks: Sequence) -> dict[str, Any]:
    """``{key: callback}`` of the callbacks with a state to keep: a ``state_dict()`` that is not
    empty. A stateless one (a progress bar, a logger) is neither saved nor looked for on resume."""
    return {
        key: callback
        for key, callback in zip(callback_keys(callbacks), callbacks)
        if hasattr(callback, "state_dict") and callback.state_dict()
    }


def callback_states(callbacks: Sequence) -> list[dict]:
    """What a checkpoint keeps of ``callbacks``: ``[{"key": key, "state": state_dict()}]`` of the stateful ones."""
    return [{"key": key, "state": callback.state_dict()} for key, callback in stateful_callbacks(callbacks).items()]


def match_callback_states(callbacks: Sequence, saved: list[dict], source: str | os.PathLike) -> list[tuple[Any, dict]]:
    """``[(callback, saved state)]``, matched by key; refuses (``ValueError`` naming them) a
    stateful callback saved but absent here, or present here but not saved. Stateless callbacks
    may come and go. A trainer without callbacks (to evaluate or fine-tune) takes none of them.
    Checkpoints of earlier versions (one state per callback, by position) need the same callbacks."""
    if not callbacks:
        return []
    if any(set(entry) != {"key", "state"} for entry in saved):
        if len(saved) != len(callbacks):
            raise ValueError(
                f"{source} holds {len(saved)} callback states, this trainer has {len(callbacks)} callbacks"
            )
        return [(c, state) for c, state in zip(callbacks, saved) if hasattr(c, "load_state_dict")]
    for entry in saved:
        if not isinstance(entry["key"], str) or not isinstance(entry["state"], dict):
            raise CheckpointError(f"{source}: callback state {entry!r} must be {{'key': str, 'state': object}}")
    states = {entry["key"]: entry["state"] for entry in saved}
    current = stateful_callbacks(callbacks)
    absent = [key for key in states if key not in current]
    unsaved = [key for key in current if key not in states]
    if absent or unsaved:
        problems = []
        if absent:
            problems.append(f"it holds the state of callback(s) {', '.join(absent)}, which this trainer lacks")
        if unsaved:
            problems.append(f"this trainer's callback(s) {', '.join(unsaved)} have a state it does not hold")
        raise ValueError(
            f"{source}: {'; '.join(problems)}. Resume with the stateful callbacks the run was saved with "
            f"(saved: {', '.join(states) or 'none'}); stateless ones (a progress bar, a logger) may differ"
        )
    return [(callback, states[key]) for key, callback in current.items()]


class ResumableTrainer:
    """What ``save_checkpoint``/``load_checkpoint`` need of a trainer: ``backend``, ``model``,
    ``callbacks``, ``history``, ``epoch``, ``optimizer_config`` and the loop's sampler state (set by
    ``TrainerBase``), and the conversions below that raise ``NotImplementedError``."""

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
                "callbacks": callback_states(self.callbacks),
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
        match_callback_states(self.callbacks, saved["callbacks"], path)
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
        for callback, state in match_callback_states(self.callbacks, saved["callbacks"], path):
            callback.load_state_dict(state)
        self.epoch = saved["epoch"]
        self.history.load_state_dict(saved["history"])
        self._pending_sampler_state = saved["sampler"]
        self._load_backend_state(saved)

    # -- what a backend provides ------------------------------------------------------------
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
