"""Optimizers from ``ml_patterns.optim.OptimizerConfig``, JAX side: one ``optax.GradientTransformation``
holding clipping, weight decay, the update rule and the schedule (the table: ``ml_patterns.optim``)."""

from __future__ import annotations

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


def build_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """The optax transformation for ``config``; its state counts updates, so the schedule resumes."""
    lr = learning_rate_schedule(config)
    b1, b2 = config.betas
    if config.name == "sgd":
        rule = [optax.add_decayed_weights(config.decay), optax.trace(decay=config.momentum, nesterov=config.nesterov),
                optax.scale_by_learning_rate(lr)]
    elif config.name in ("adam", "adam_l2"):
        # torch's Adam(weight_decay) adds wd * param to the gradient before the moments (L2).
        rule = [optax.add_decayed_weights(config.decay), optax.scale_by_adam(b1=b1, b2=b2, eps=config.eps),
                optax.scale_by_learning_rate(lr)]
    else:
        # Decoupled: -lr * (adam_update + wd * param), which is torch's AdamW.
        rule = [optax.scale_by_adam(b1=b1, b2=b2, eps=config.eps), optax.add_decayed_weights(config.decay),
                optax.scale_by_learning_rate(lr)]
    if config.clip_grad_norm is not None:
        rule.insert(0, optax.clip_by_global_norm(config.clip_grad_norm))
    return optax.chain(*rule)
