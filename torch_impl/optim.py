"""Optimizers from ``ml_patterns.optim.OptimizerConfig``, torch side (the table is there).

``build_optimizer(config, parameters)`` returns an ``Optimizer`` whose ``step()`` clips, updates and
advances the schedule, in that order, so a training loop reads as zero_grad / backward / step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from ml_patterns.optim import OptimizerConfig, learning_rate_at


class Optimizer:
    """A torch optimizer, its learning-rate schedule and gradient clipping, stepped together."""

    def __init__(self, config: OptimizerConfig, parameters: Iterable[torch.nn.Parameter]):
        self.config = config
        self.parameters = [p for p in parameters if p.requires_grad]
        self.optimizer = _torch_optimizer(config, self.parameters)
        # LambdaLR multiplies the base rate by the factor; update k uses factor(k), as optax's count.
        self.scheduler = LambdaLR(self.optimizer, lambda step: learning_rate_at(config, step) / config.learning_rate)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.config.clip_grad_norm is not None:
            # torch divides by (norm + 1e-6), optax by norm: a relative difference below 1e-6 /
            # norm in the clipped gradient, far inside the training-history tolerance.
            torch.nn.utils.clip_grad_norm_(self.parameters, self.config.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()

    @property
    def learning_rate(self) -> float:
        """The rate the next ``step()`` will use."""
        return self.optimizer.param_groups[0]["lr"]

    @property
    def step_count(self) -> int:
        return self.scheduler.last_epoch

    def set_step(self, step: int) -> None:
        """Puts the schedule at update ``step`` (resuming from a checkpoint of either backend)."""
        self.scheduler.last_epoch = step
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate_at(self.config, step)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def _torch_optimizer(config: OptimizerConfig, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    lr = config.learning_rate
    if config.name == "sgd":
        return torch.optim.SGD(
            parameters, lr=lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.decay
        )
    adam = torch.optim.Adam if config.name in ("adam", "adam_l2") else torch.optim.AdamW
    return adam(
        parameters, lr=lr, betas=config.betas, eps=config.eps, weight_decay=config.decay, fused=_fused(parameters)
    )


def _fused(parameters: list[torch.nn.Parameter]) -> bool:
    """torch's fused Adam/AdamW kernel: one pass over each parameter and its two moments instead of
    the default (foreach) implementation's several; the large MLP's train step runs about 10%
    faster with it on a 2-core CPU, the same losses to float32 rounding (docs/PERFORMANCE.md). It
    takes floating-point parameters on a CPU or CUDA device."""
    return bool(parameters) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in parameters)


def build_optimizer(config: OptimizerConfig, parameters: Iterable[torch.nn.Parameter]) -> Optimizer:
    """The torch optimizer for ``config`` over ``parameters`` (e.g. ``model.parameters()``)."""
    return Optimizer(config, parameters)
