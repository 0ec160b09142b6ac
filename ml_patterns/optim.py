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
adamw       ``AdamW(weight_decay=wd)``: decoupled         ``chain(scale_by_adam, decay_then_step)``:
            (the weight decayed, then stepped)            torch's two roundings
==========  ===========================================  =========================================

Weight decay has no default where it applies (torch's AdamW defaults to 0.01, optax's to 1e-4): it
must be given. Gradient clipping by global norm happens first, on the raw gradients, on both sides.
The learning rate follows ``learning_rate_at``: linear warmup from 0, then cosine decay.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

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
        problems = []
        for name in ("warmup_steps", "total_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                problems.append(f"{name} must be an integer, got {value!r}")
        if not problems and not 0 <= self.warmup_steps < self.total_steps:
            problems.append(f"need 0 <= warmup_steps < total_steps, got {self.warmup_steps}, {self.total_steps}")
        _check_range(problems, "final_fraction", self.final_fraction, 0.0, 1.0, "[0, 1]")
        if problems:
            raise ValueError("invalid ScheduleConfig: " + "; ".join(problems))


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
        # A NaN or infinite hyperparameter trains on silently into NaN weights: refuse it here, with
        # the field and the range that makes sense.
        problems = []
        _check_range(problems, "learning_rate", self.learning_rate, 0.0, math.inf, "(0, inf)", low_open=True)
        if self.weight_decay is not None:
            _check_range(problems, "weight_decay", self.weight_decay, 0.0, math.inf, "[0, inf)")
        _check_range(problems, "momentum", self.momentum, 0.0, 1.0, "[0, 1)", high_open=True)
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            problems.append(f"betas must be a pair (beta1, beta2), got {self.betas!r}")
        else:
            for i, beta in enumerate(self.betas):
                _check_range(problems, f"betas[{i}]", beta, 0.0, 1.0, "[0, 1)", high_open=True)
        _check_range(problems, "eps", self.eps, 0.0, math.inf, "(0, inf)", low_open=True)
        if self.clip_grad_norm is not None:
            _check_range(
                problems, "clip_grad_norm", self.clip_grad_norm, 0.0, math.inf, "(0, inf) or None", low_open=True
            )
        if self.schedule is not None and not isinstance(self.schedule, ScheduleConfig):
            problems.append(f"schedule must be a ScheduleConfig or None, got {type(self.schedule).__name__}")
        if problems:
            raise ValueError("invalid OptimizerConfig: " + "; ".join(problems))

    @property
    def decay(self) -> float:
        return self.weight_decay or 0.0


def _check_range(
    problems: list[str],
    name: str,
    value,
    low: float,
    high: float,
    allowed: str,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Appends a message naming ``name`` and its ``allowed`` range unless ``value`` is a finite number in it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        problems.append(f"{name} must be a number in {allowed}, got {value!r}")
        return
    if (
        not math.isfinite(value)
        or value < low
        or value > high
        or (low_open and value == low)
        or (high_open and value == high)
    ):
        problems.append(f"{name} must be a finite number in {allowed}, got {value!r}")


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
