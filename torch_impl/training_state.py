"""The torch trainer's optimizer state in a full training checkpoint (``ml_patterns.training_resume``):
an ``OptimizerConfig``'s canonical slots, or a ``torch.optim.Optimizer``'s own state and its
learning-rate scheduler's, and torch's random generators."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ml_patterns.training_checkpoint import OPTIMIZER_SLOTS
from torch_impl import state


class OptimizerCheckpoint:
    """The ``ResumableTrainer`` conversions of ``torch_impl.training.Trainer`` (which it is mixed
    into): ``optimizer``, ``optimizer_config``, ``_named_parameters()`` and ``_steps`` are the trainer's."""

    def _optimizer_arrays(self) -> dict[str, np.ndarray]:
        if self.optimizer_config is None:
            return {
                f"state/{index}/{key}": state.tensor_to_numpy(value).copy()
                for index, entry in self.optimizer.state_dict()["state"].items()
                for key, value in entry.items()
                if torch.is_tensor(value)
            }
        # Zeros before the first step: torch creates its state lazily; zero moments are what optax
        # starts from, and mean the same.
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
        (group,) = optimizer.param_groups
        for name, parameter in self._named_parameters():
            entry = {slot: torch.from_numpy(slots[slot][name].copy()).to(parameter) for slot in slots}
            if self.optimizer_config.name != "sgd":  # torch keeps Adam's step per parameter
                where = adam_step_device(group, parameter)
                entry["step"] = torch.tensor(float(step), dtype=torch.float32, device=where)
            optimizer.state[parameter] = entry
        self.optimizer.set_step(step)

    def _framework_optimizer_json(self) -> dict:
        saved = self.optimizer.state_dict()
        scalars = {
            f"{index}/{key}": value
            for index, entry in saved["state"].items()
            for key, value in entry.items()
            if not torch.is_tensor(value)
        }
        scheduler = None
        if self.scheduler is not None:
            scheduler = {"class": type(self.scheduler).__name__, "state": _json_checked(self.scheduler.state_dict())}
        return {
            "class": type(self.optimizer).__name__,
            "param_groups": _json_checked(saved["param_groups"]),
            "scalars": _json_checked(scalars),
            "scheduler": scheduler,
        }

    def _check_framework_optimizer(self, arrays: dict[str, np.ndarray], saved: dict, source: str) -> None:
        if saved.get("class") != type(self.optimizer).__name__:
            raise ValueError(
                f"{source} holds the state of a torch.optim.{saved.get('class')}, this trainer has a "
                f"torch.optim.{type(self.optimizer).__name__}"
            )
        saved_class = (saved.get("scheduler") or {}).get("class")
        mine = None if self.scheduler is None else type(self.scheduler).__name__
        if saved_class != mine:
            raise ValueError(
                f"{source} holds the state of {_scheduler_text(saved_class)}, this trainer has "
                f"{_scheduler_text(mine)}: resume with the scheduler the run was saved with (scheduler=)"
            )

    def _load_framework_optimizer(self, arrays: dict[str, np.ndarray], saved: dict, source: str) -> None:
        entries: dict[int, dict[str, Any]] = {}
        for key, value in arrays.items():
            _, index, name = key.split("/", 2)
            entries.setdefault(int(index), {})[name] = torch.from_numpy(value.copy())
        for key, value in saved["scalars"].items():
            index, name = key.split("/", 1)
            entries.setdefault(int(index), {})[name] = value
        current = self.optimizer.state_dict()["param_groups"]
        if len(current) != len(saved["param_groups"]):
            raise ValueError(
                f"{source}: {len(saved['param_groups'])} parameter groups, this optimizer has {len(current)}"
            )
        # JSON has no tuples: give back the tuple-ness of the optimizer's own entries (betas).
        groups = [
            {k: tuple(v) if isinstance(mine.get(k), tuple) else v for k, v in group.items()}
            for group, mine in zip(saved["param_groups"], current)
        ]
        try:
            self.optimizer.load_state_dict({"state": entries, "param_groups": groups})
        except (ValueError, KeyError) as error:
            raise ValueError(f"{source}: the optimizer state does not fit this optimizer: {error}") from None
        self._steps = int(saved["step"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(saved["scheduler"]["state"])

    def _backend_state(self) -> dict:
        # Dropout draws from torch's global generator of the model's device (the CPU's, or each
        # GPU's): restoring them makes a resume draw the masks of the uninterrupted run.
        saved = {"torch_rng_state": _encode(torch.get_rng_state())}
        if torch.cuda.is_available():
            saved["torch_cuda_rng_states"] = [_encode(state) for state in torch.cuda.get_rng_state_all()]
        return saved

    def _load_backend_state(self, saved: dict) -> None:
        if "torch_rng_state" in saved:
            torch.set_rng_state(_decode(saved["torch_rng_state"]))
        cuda = saved.get("torch_cuda_rng_states")
        # Saved on as many GPUs as here: each gets its own back. Elsewhere (a CPU, another GPU count)
        # the GPUs' dropout cannot continue the saved stream, so it is left as it is.
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([_decode(state) for state in cuda])


def adam_step_device(group: Mapping, parameter: torch.Tensor) -> torch.device:
    """Where torch's Adam/AdamW keeps a parameter's ``step``: beside the parameter for the fused and
    capturable implementations (a CUDA kernel reads it; a CPU ``step`` there is refused), on the
    CPU otherwise (read on the host, no device sync)."""
    return parameter.device if group.get("fused") or group.get("capturable") else torch.device("cpu")


def _encode(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode()


def _decode(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())


def _json_checked(value: Any) -> Any:
    """``value`` if it survives JSON as itself (numbers, strings, lists, dicts, tuples as lists)."""
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except TypeError as error:
        raise TypeError(
            f"this optimizer's or scheduler's state holds a value JSON cannot keep ({error}); a torch.optim "
            "optimizer or scheduler with tensor hyperparameters cannot be checkpointed, use float ones"
        ) from None


def _scheduler_text(name: str | None) -> str:
    return "no learning-rate scheduler" if name is None else f"a torch.optim.lr_scheduler.{name}"


SCHEDULER_INTERVALS = ("epoch", "step")


def check_scheduler(scheduler: Any, interval: str, optimizer: Any) -> Any:
    """``scheduler`` (None, or a ``torch.optim.lr_scheduler`` scheduler of ``optimizer``, the
    trainer's ``torch.optim.Optimizer``) if the trainer can step and checkpoint it; else a
    ``TypeError``/``ValueError`` saying why."""
    if interval not in SCHEDULER_INTERVALS:
        raise ValueError(f"scheduler_interval must be one of {SCHEDULER_INTERVALS}, got {interval!r}")
    if scheduler is None:
        return None
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler) and not plateau:
        raise TypeError(f"scheduler must be a torch.optim.lr_scheduler scheduler, got {type(scheduler).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(
            "scheduler= steps a torch.optim optimizer's learning rate; an OptimizerConfig brings its own "
            "schedule (ml_patterns.optim.ScheduleConfig): give the schedule there, or pass a torch.optim optimizer"
        )
    if scheduler.optimizer is not optimizer:
        raise ValueError("the scheduler was built over another optimizer than the one given to the trainer")
    if plateau and interval == "step":
        raise ValueError("ReduceLROnPlateau reads an epoch's loss: use scheduler_interval='epoch'")
    return scheduler


def step_epoch_scheduler(scheduler: Any, history: Any) -> None:
    """Steps an epoch scheduler after an epoch; ``ReduceLROnPlateau`` with the epoch's ``val_loss``
    (``train_loss`` without a val loader), read from the history already on the host."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        key = "val_loss" if "val_loss" in history.metrics else "train_loss"
        scheduler.step(history[key][-1])
    else:
        scheduler.step()
