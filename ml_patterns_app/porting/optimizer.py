"""A few optimizer steps on both sides with the same synthetic gradients: the optimizer alone.

Gradients are drawn with magnitudes spread log-uniformly over 1e-8..1, because the classic optimizer
porting bugs (epsilon inside or outside the square root, bias correction, decoupled or L2 weight
decay) only show where the gradient is small against epsilon or the weights against the decay.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import jax.numpy as jnp
import numpy as np
import optax
import torch

from ml_patterns.parity import GRADIENT, Tolerance
from ml_patterns_app.porting.report import LayerReport, Row, compare_values
from ml_patterns_app.porting.settings import differences


def compare_optimizers(
    torch_optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
    optax_optimizer: optax.GradientTransformation,
    *,
    shapes: Sequence[tuple[int, ...]] = ((16, 8), (8,)),
    steps: int = 3,
    seed: int = 0,
    tolerance: Tolerance = GRADIENT,
    reference: bool = True,
) -> LayerReport:
    """Applies ``steps`` updates to the same random parameters (float32, of ``shapes``) and compares
    the parameters after each step; ``reference`` adds a float64 torch run for the bounded fallback.

    A step is one deterministic call on identical inputs, so the per-entry tolerance is the
    gradients' (default). ``first`` is the earliest differing parameter. For Adam and AdamW, the
    hyperparameters that differ (learning rate, betas, eps and where it goes, weight decay and how it
    applies) are named with the optax call that matches torch, when both can be read (``settings``).
    """
    if not shapes or steps < 1 or any(0 in tuple(shape) for shape in shapes):
        raise ValueError(f"compare_optimizers needs parameters and steps to compare: shapes={shapes!r}, steps={steps}")
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=shape).astype(np.float32) for shape in shapes]
    grads = [
        [
            (rng.choice([-1.0, 1.0], size=p.shape) * 10.0 ** rng.uniform(-8, 0, p.shape)).astype(np.float32)
            for p in params
        ]
        for _ in range(steps)
    ]
    torch_params = _torch_steps(torch_optimizer, params, grads, torch.float32)
    truth = _torch_steps(torch_optimizer, params, grads, torch.float64) if reference else None
    jax_params = _optax_steps(optax_optimizer, params, grads)
    rows = []
    for step in range(steps):
        for i in range(len(params)):
            label = f"step {step + 1}, parameter {i} {list(params[i].shape)}"
            ref = truth[step][i] if truth is not None else None
            max_abs, max_rel, passed, note = compare_values(torch_params[step][i], jax_params[step][i], tolerance, ref)
            rows.append(
                Row(
                    label,
                    f"parameter {i}",
                    f"parameter {i}",
                    "update",
                    params[i].shape,
                    params[i].shape,
                    max_abs,
                    max_rel,
                    tolerance,
                    passed,
                    note,
                )
            )
    first = next((row for row in rows if not row.passed), None)
    found, fix = differences(torch_optimizer([torch.nn.Parameter(torch.zeros(1))]), optax_optimizer)
    settings = f" Hyperparameters that differ: {'; '.join(found)}. To match torch: {fix}." if found else ""
    where = (
        "The optimizers agree." + settings
        if first is None
        else f"The optimizers differ from {first.label} on, with identical gradients." + settings
        if found
        else f"The optimizers differ from {first.label} on, with identical gradients: compare their "
        "hyperparameters and formulas (epsilon inside or outside the square root, bias correction, "
        "weight decay coupled or decoupled, defaults that differ)."
    )
    scope = f"compared {len(params)} parameter(s) of shapes {[list(p.shape) for p in params]} over {steps} step(s)"
    return LayerReport("optimizer", tuple(rows), first, where, scope)


def _torch_steps(make_optimizer, params, grads, dtype) -> list[list[np.ndarray]]:
    tensors = [torch.nn.Parameter(torch.from_numpy(copy.deepcopy(p)).to(dtype)) for p in params]
    optimizer = make_optimizer(tensors)
    history = []
    for step_grads in grads:
        for tensor, grad in zip(tensors, step_grads):
            tensor.grad = torch.from_numpy(grad).to(dtype)
        optimizer.step()
        history.append([t.detach().cpu().numpy().copy() for t in tensors])
    return history


def _optax_steps(tx, params, grads) -> list[list[np.ndarray]]:
    values = [jnp.asarray(p) for p in params]
    state = tx.init(values)
    history = []
    for step_grads in grads:
        updates, state = tx.update([jnp.asarray(g) for g in step_grads], state, values)
        values = optax.apply_updates(values, updates)
        history.append([np.asarray(v) for v in values])
    return history
