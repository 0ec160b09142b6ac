"""Optimizers from ``ml_patterns.optim.OptimizerConfig``, JAX side: one ``optax.GradientTransformation``
holding clipping, weight decay, the update rule and the schedule (the table: ``ml_patterns.optim``)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ml_patterns.optim import OptimizerConfig


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
    """optax's form of ``ml_patterns.optim.learning_rate_at`` (checked equal by parity tests)."""
    schedule = config.schedule
    if schedule is None:
        return optax.constant_schedule(config.learning_rate)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=schedule.warmup_steps,
        decay_steps=schedule.total_steps,
        end_value=config.learning_rate * schedule.final_fraction,
    )


def scale_by_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """``optax.scale_by_adam`` with torch's update and bias corrections accurate in float32.

    optax computes the corrections ``1 - b ** t`` in float32, ``b`` itself rounded to float32 (which
    alone moves ``1 - 0.999`` by 1.3e-5 relative), while torch computes them in Python float64: optax's
    steps are ~6e-6 relative off torch's (up to 1e-5), all one way, step after step. On the molecule
    model at learning rate 1e-3 that carried ``ml-patterns compare``'s JAX run to 40x the float32 noise
    floor. Here the correction is ``-expm1(t * log(b))`` with ``log(b)`` taken in float64: the steps are
    within a few float32 ulps of torch's (mean 2.4e-7, max 7e-7; ``parity_tests/test_optim.py``).
    The update is torch's (``torch.optim.Adam``, single-tensor path):
    ``m / (sqrt(v) / sqrt(1 - b2**t) + eps) / (1 - b1**t)``, to be scaled by ``-lr``.

    The state is optax's ``ScaleByAdamState(count, mu, nu)``, unchanged: checkpoints map mu/nu to
    torch's exp_avg/exp_avg_sq by that structure. ``b1``, ``b2`` in [0, 1) (``OptimizerConfig`` checks).
    """
    # log(0) = -inf gives a correction of exactly 1 for b = 0 (no moment averaging).
    log_b1, log_b2 = (math.log(b) if b > 0.0 else -math.inf for b in (b1, b2))

    def update_fn(updates, state, params=None):
        del params
        mu = optax.tree_utils.tree_update_moment(updates, state.mu, b1, 1)
        nu = optax.tree_utils.tree_update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        step = count.astype(jnp.float32)
        correction1 = -jnp.expm1(step * log_b1)
        sqrt_correction2 = jnp.sqrt(-jnp.expm1(step * log_b2))
        updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) / sqrt_correction2 + eps) / correction1, mu, nu)
        return updates, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(optax.scale_by_adam(b1=b1, b2=b2, eps=eps).init, update_fn)


def decay_then_step(learning_rate: optax.Schedule, weight_decay: float) -> optax.GradientTransformation:
    """The last stage of AdamW, rounded as torch's: the weight first multiplied by ``1 - lr * wd``,
    then the step ``-lr * update`` added, each rounded to float32.

    torch's AdamW (fused, foreach and single-tensor alike) computes ``p * (1 - lr*wd)`` and then adds
    the step: two roundings at the weight's scale per update. optax's ``add_decayed_weights`` then
    ``scale_by_learning_rate`` compute ``-lr * (update + wd * p)`` and round ``p + that`` once: the
    same in exact arithmetic, a systematic difference of up to an ulp of the weight every step in
    float32, which training carries forward (the main difference ``ml-patterns compare`` measured
    between the two backends; docs/PARITY.md). optax applies ``p + u`` (``optax.apply_updates``), so
    the update returned is ``new - p`` with ``new`` torch's new weight: the difference of two floats
    within a factor 2 of each other is exact (Sterbenz), and ``p + (new - p)`` is ``new`` again, bit
    for bit, unless the step is larger than the weight itself (then within an ulp of ``new``).

    The state is optax's ``ScaleByScheduleState(count)``, as ``scale_by_learning_rate``'s: the schedule
    resumes from a checkpoint's step count. Needs ``params``.
    """

    def init_fn(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("decay_then_step needs the parameters: call update(grads, state, params)")
        lr = learning_rate(state.count)
        keep = 1.0 - lr * weight_decay

        def step(update, param):
            decayed = param * jnp.asarray(keep, param.dtype)
            return (decayed - jnp.asarray(lr * update, param.dtype)) - param

        return jax.tree.map(step, updates, params), optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def build_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """The optax transformation for ``config``; its state counts updates, so the schedule resumes."""
    lr = learning_rate_schedule(config)
    b1, b2 = config.betas
    if config.name == "sgd":
        rule = [
            optax.add_decayed_weights(config.decay),
            optax.trace(decay=config.momentum, nesterov=config.nesterov),
            optax.scale_by_learning_rate(lr),
        ]
    elif config.name in ("adam", "adam_l2"):
        # torch's Adam(weight_decay) adds wd * param to the gradient before the moments (L2).
        rule = [
            optax.add_decayed_weights(config.decay),
            scale_by_adam(b1, b2, config.eps),
            optax.scale_by_learning_rate(lr),
        ]
    else:
        rule = [scale_by_adam(b1, b2, config.eps), decay_then_step(lr, config.decay)]
    if config.clip_grad_norm is not None:
        rule.insert(0, optax.clip_by_global_norm(config.clip_grad_norm))
    return optax.chain(*rule)


def _is_optax_state(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields")


def map_states(opt_state: Any, fn) -> Any:
    """Applies ``fn`` to every optax state namedtuple inside a chain's nested tuples."""
    if _is_optax_state(opt_state):
        return fn(opt_state)
    if isinstance(opt_state, tuple):
        return tuple(map_states(child, fn) for child in opt_state)
    return opt_state


def find_states(opt_state: Any, state_type: type) -> list:
    """Every optax state of ``state_type`` inside ``opt_state``, in chain order."""
    found = []

    def collect(node: Any) -> Any:
        if isinstance(node, state_type):
            found.append(node)
        return node

    map_states(opt_state, collect)
    return found
