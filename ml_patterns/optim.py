"""One framework-free optimizer config, built by ``torch_impl.optim`` and ``jax_impl.optim``.

The names mean the same thing on both sides (PARITY.md lists the traps this avoids):

==========  ===========================================  =========================================
name        torch                                        optax
==========  ===========================================  =========================================
sgd         ``SGD(momentum, nesterov, weight_decay)``     ``chain(add_decayed_weights, trace,
            (weight decay as L2 on the gradient)          scale_by_learning_rate)``
adam        ``Adam(weight_decay=0)``                     ``chain(scale_by_adam, scale_by_lr)``
adam_l2     ``Adam(weight_decay=wd)``: L2 added to the    ``chain(add_decayed_weights, scale_by_adam,
            gradient, not decoupled                       scale_by_learning_rate)``
adamw       ``AdamW(weight_decay=wd)``: decoupled         ``adamw(weight_decay=wd)``
==========  ===========================================  =========================================

Weight decay has no default where it applies (torch's AdamW defaults to 0.01, optax's to 1e-4): it
must be given. Gradient clipping by global norm happens first, on the raw gradients, on both sides.
The learning rate follows ``learning_rate_at``: linear warmup from 0, then cosine decay.
"""

from __future__ import annotations

import dataclasses
import math

OPTIMIZERS = ("sgd", "adam", "adam_l2", "adamw")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Linear warmup from 0 to the peak learning rate, then cosine decay (optax's
    ``warmup_cosine_decay_schedule``; the step before the first update is 0, so lr(0) = 0)."""

    warmup_steps: int
    # Total schedule length, warmup included; after it the rate stays at its final value.
    total_steps: int
    # Final learning rate as a fraction of the peak.
    final_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.warmup_steps < self.total_steps:
            raise ValueError(f"need 0 <= warmup_steps < total_steps, got {self.warmup_steps}, {self.total_steps}")
        if not 0 <= self.final_fraction <= 1:
            raise ValueError(f"final_fraction must lie in [0, 1], got {self.final_fraction}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str
    learning_rate: float = 1e-3  # the peak rate when a schedule is set
    weight_decay: float | None = None  # required for adamw and adam_l2; L2 for sgd; unused by adam
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adam family
    eps: float = 1e-8  # adam family, added outside the square root on both sides
    clip_grad_norm: float | None = None  # max global L2 norm of the gradients, or no clipping
    schedule: ScheduleConfig | None = None  # None: constant learning rate

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; known: {OPTIMIZERS}")
        if self.name in ("adamw", "adam_l2") and self.weight_decay is None:
            raise ValueError(f"{self.name} needs an explicit weight_decay (torch and optax defaults differ)")
        if self.name == "adam" and self.weight_decay:
            raise ValueError("adam has no weight decay; use adam_l2 (coupled, torch's Adam) or adamw (decoupled)")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ValueError(f"clip_grad_norm must be positive, got {self.clip_grad_norm}")

    @property
    def decay(self) -> float:
        return self.weight_decay or 0.0


def learning_rate_at(config: OptimizerConfig, step: int) -> float:
    """The learning rate used by update number ``step`` (0-based), the reference both sides follow."""
    schedule = config.schedule
    if schedule is None:
        return config.learning_rate
    peak = config.learning_rate
    if step < schedule.warmup_steps:
        return peak * step / schedule.warmup_steps
    final = peak * schedule.final_fraction
    decay_steps = schedule.total_steps - schedule.warmup_steps
    progress = min(step - schedule.warmup_steps, decay_steps) / decay_steps
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
