"""Optimizers and schedules: the same config trains the same weights on both sides.

A small MLP regression with copied weights is trained for 120 steps per configuration; the loss of
every step and the final weights must agree within the training-history tolerance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jax_impl.optim as jax_optim
from jax_impl.optim import build_optimizer as build_jax_optimizer
from jax_impl.optim import learning_rate_schedule
from ml_patterns.optim import OptimizerConfig, ScheduleConfig, learning_rate_at
from parity_tests.tolerances import HISTORY
from torch_impl.optim import build_optimizer as build_torch_optimizer

STEPS = 120
SCHEDULE = ScheduleConfig(warmup_steps=10, total_steps=100, final_fraction=0.1)

CONFIGS = {
    "sgd_momentum": OptimizerConfig("sgd", learning_rate=0.05, momentum=0.9),
    "sgd_nesterov_l2": OptimizerConfig("sgd", learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": OptimizerConfig("adam", learning_rate=1e-2),
    "adam_l2": OptimizerConfig("adam_l2", learning_rate=1e-2, weight_decay=1e-2),
    "adamw": OptimizerConfig("adamw", learning_rate=1e-2, weight_decay=0.1),
    "adamw_clip_schedule": OptimizerConfig(
        "adamw", learning_rate=1e-2, weight_decay=0.05, clip_grad_norm=0.5, schedule=SCHEDULE
    ),
    "sgd_clip_schedule": OptimizerConfig("sgd", learning_rate=0.05, clip_grad_norm=0.1, schedule=SCHEDULE),
}


def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = (np.sin(x[:, :1]) + 0.5 * x[:, 1:2] ** 2).astype(np.float32)
    weights = {
        "w1": (rng.normal(size=(16, 8)) * 0.5).astype(np.float32),  # torch layout [out, in]
        "b1": np.zeros(16, np.float32),
        "w2": (rng.normal(size=(1, 16)) * 0.5).astype(np.float32),
        "b2": np.zeros(1, np.float32),
    }
    return x, y, weights


def train_torch(config):
    x, y, weights = problem()
    params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in weights.items()}
    optimizer = build_torch_optimizer(config, params.values())
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        hidden = torch.tanh(xt @ params["w1"].T + params["b1"])
        loss = torch.mean((hidden @ params["w2"].T + params["b2"] - yt) ** 2)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return np.array([float(v) for v in losses]), {k: v.detach().numpy() for k, v in params.items()}


def train_jax(config):
    x, y, weights = problem()
    params = {k: jnp.asarray(v) for k, v in weights.items()}
    optimizer = build_jax_optimizer(config)

    def loss_fn(p):
        hidden = jnp.tanh(x @ p["w1"].T + p["b1"][None, :])
        return jnp.mean((hidden @ p["w2"].T + p["b2"][None, :] - y) ** 2)

    @jax.jit
    def step(p, state):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    state = optimizer.init(params)
    losses = []
    for _ in range(STEPS):
        params, state, loss = step(params, state)
        losses.append(loss)
    return np.array(jax.device_get(losses)), {k: np.asarray(v) for k, v in params.items()}


@pytest.mark.standard_promotion("optax's scale_by_adam and schedules mix the int32 step count with Python floats")
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_config_same_training(name):
    config = CONFIGS[name]
    torch_losses, torch_params = train_torch(config)
    jax_losses, jax_params = train_jax(config)
    assert torch_losses[-1] < 0.5 * torch_losses[0], "the problem must actually train"
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=HISTORY.rtol, atol=HISTORY.atol)
    for key in torch_params:
        np.testing.assert_allclose(
            jax_params[key], torch_params[key], rtol=HISTORY.rtol, atol=HISTORY.atol, err_msg=key
        )


@pytest.mark.standard_promotion("optax's schedules mix the int32 step count with Python floats")
def test_schedules_follow_the_reference_formula():
    config = OptimizerConfig("adamw", learning_rate=3e-3, weight_decay=0.01, schedule=SCHEDULE)
    reference = np.array([learning_rate_at(config, step) for step in range(130)])
    jax_rates = np.array([float(learning_rate_schedule(config)(step)) for step in range(130)])
    np.testing.assert_allclose(jax_rates, reference, rtol=1e-6, atol=1e-12)

    optimizer = build_torch_optimizer(config, [torch.nn.Parameter(torch.zeros(1))])
    torch_rates = []
    for _ in range(130):
        torch_rates.append(optimizer.learning_rate)
        optimizer.step()
    np.testing.assert_allclose(torch_rates, reference, rtol=1e-12, atol=0)
    assert reference[0] == 0 and reference[10] == pytest.approx(3e-3) and reference[-1] == pytest.approx(3e-4)


ADAM_STEPS = 300


def adam_steps(config):
    """Every step's update of ``config`` on torch, on our optax chain and on that chain with optax's
    stock ``scale_by_adam``, from one fixed gradient sequence. The weights are put back at 0 before each step,
    so torch's weights after it are its update, rounded once, and the moments alone carry the history."""
    gradients = (1.0 + 0.2 * np.random.default_rng(0).normal(size=(ADAM_STEPS, 64))).astype(np.float32)
    weight = torch.nn.Parameter(torch.zeros(64))
    optimizer = build_torch_optimizer(config, [weight])
    torch_steps = []
    for gradient in gradients:
        with torch.no_grad():
            weight.zero_()
        weight.grad = torch.from_numpy(gradient.copy())
        optimizer.step()
        torch_steps.append(weight.detach().numpy().copy())

    def jax_steps(transform):
        zeros = jnp.zeros(64, jnp.float32)
        update = jax.jit(lambda gradient, state: transform.update(gradient, state, zeros))
        state, steps = transform.init(zeros), []
        for gradient in gradients:
            step, state = update(jnp.asarray(gradient), state)
            steps.append(np.asarray(step))
        return np.array(steps)

    ours = jax_steps(build_jax_optimizer(config))
    # The control: the same chain with optax's own scale_by_adam (build_optimizer reads the name per call).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jax_optim, "scale_by_adam", lambda b1, b2, eps: optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
        stock = jax_steps(build_jax_optimizer(config))
    return np.array(torch_steps), ours, stock


@pytest.mark.standard_promotion("optax's stock scale_by_adam (the control) mixes the int32 count with Python floats")
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_bias_corrections_match_torch(name):
    """optax computes 1 - b**t in float32: its steps are ~6e-6 off torch's on average (up to 1e-5), all
    one way. Ours are within a few float32 ulps of torch's (measured: mean 2.4e-7, max 7e-7 relative).
    The stock chain is the control: the test tells the two apart."""
    config = OptimizerConfig(name, learning_rate=1e-3, weight_decay=0.1 if name == "adamw" else 0.0)
    torch_steps, ours, stock = adam_steps(config)
    ours_error = np.abs(ours - torch_steps) / np.abs(torch_steps)
    stock_error = np.abs(stock - torch_steps) / np.abs(torch_steps)
    assert ours_error.max() < 1e-6, f"ours vs torch: up to {ours_error.max():.2e} relative"
    assert stock_error.mean() > 10 * ours_error.mean(), (
        f"control: stock optax {stock_error.mean():.2e} vs ours {ours_error.mean():.2e} mean relative"
    )


@pytest.mark.standard_promotion("optax's schedules mix the int32 step count with Python floats")
def test_adamw_decays_the_weights_as_torch_rounds():
    """torch's AdamW multiplies each weight by float32(1 - lr * wd), then adds the step: two roundings.
    With zero gradients the Adam step is exactly 0, so the weights are the decay alone: ours must be
    torch's bit for bit; optax's stock form, ``-lr * (0 + wd * p)`` added once, is the control (it
    rounds differently on a sixth of the entries). A constant rate: a schedule's rate, computed in
    float32 by optax and in float64 by torch, can put ``1 - lr * wd`` one ulp apart on a rare step
    (about one in 1,000 at lr * wd = 1e-3), which then moves most weights by an ulp."""
    config = OptimizerConfig("adamw", learning_rate=1e-2, weight_decay=0.1)
    weights = np.random.default_rng(0).normal(size=4096).astype(np.float32)
    weight = torch.nn.Parameter(torch.from_numpy(weights.copy()))
    optimizer = build_torch_optimizer(config, [weight])
    stock = optax.chain(
        jax_optim.scale_by_adam(*config.betas, config.eps),
        optax.add_decayed_weights(config.decay),
        optax.scale_by_learning_rate(learning_rate_schedule(config)),
    )
    ours, control = build_jax_optimizer(config), stock
    params = {"ours": jnp.asarray(weights), "control": jnp.asarray(weights)}
    states = {"ours": ours.init(params["ours"]), "control": control.init(params["control"])}
    zeros = jnp.zeros_like(params["ours"])
    for _ in range(30):
        weight.grad = torch.zeros_like(weight)
        optimizer.step()
        for name, transform in (("ours", ours), ("control", control)):
            update, states[name] = transform.update(zeros, states[name], params[name])
            params[name] = optax.apply_updates(params[name], update)
    expected = weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(params["ours"]), expected)
    assert np.mean(np.asarray(params["control"]) != expected) > 0.05, "control: the stock chain must round differently"
