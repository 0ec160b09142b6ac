"""Masked cross-entropy and CombinedLoss: torch against JAX, values and gradients, numpy in between.

Inputs are drawn by hypothesis: shapes, mask patterns (random, empty rows, all masked, none
masked), bool/int/float masks, junk targets (-100, out of range) at masked positions, logits up to
1e4 in magnitude, float32 and bfloat16 logits, with and without label smoothing. Shapes come from
a small set: each input signature costs JAX a compilation (~0.5 s on a small CPU), and the
signatures already multiply (2 shapes x 2 logits dtypes x 3 mask dtypes x 2 smoothings).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jax_impl import losses as jax_losses
from ml_patterns.losses import TargetOutOfRangeError
from parity_tests.tolerances import GRADIENT, LOSS
from torch_impl import losses as torch_losses

# One bfloat16 unit in the last place, relative: 8 significant bits.
BF16_ULP = 2.0**-7


@st.composite
def cross_entropy_inputs(draw):
    batch, seq, vocab = draw(st.sampled_from([(3, 6, 7), (2, 5, 33)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1.0, 30.0, 1e4]))
    logits = (rng.normal(size=(batch, seq, vocab)) * scale).astype(np.float32)
    if draw(st.booleans()):
        logits = logits.astype(jnp.bfloat16)
    pattern = draw(st.sampled_from(["random", "empty rows", "all masked", "none masked"]))
    mask = {
        "random": rng.random((batch, seq)) < 0.6,
        "empty rows": np.repeat(rng.random((batch, 1)) < 0.5, seq, axis=1) & (rng.random((batch, seq)) < 0.8),
        "all masked": np.zeros((batch, seq), bool),
        "none masked": np.ones((batch, seq), bool),
    }[pattern]
    targets = rng.integers(0, vocab, size=(batch, seq))
    junk = draw(st.sampled_from([-100, vocab, -1, 2**30]))
    targets = np.where(mask, targets, junk)
    mask_kind = draw(st.sampled_from(["bool", "int", "float"]))
    if mask_kind == "int":
        mask = mask.astype(np.int32)
    elif mask_kind == "float":
        mask = (mask * rng.uniform(0.25, 2.0, mask.shape)).astype(np.float32)
    smoothing = draw(st.sampled_from([0.0, 0.1]))
    return logits, targets, mask, smoothing


def _torch(logits, targets, mask, smoothing):
    dtype = torch.bfloat16 if logits.dtype == jnp.bfloat16 else torch.float32
    x = torch.tensor(logits.astype(np.float32)).to(dtype).requires_grad_()  # exact: already representable
    t, m = torch.tensor(targets), torch.tensor(mask)
    loss = torch_losses.masked_cross_entropy(x, t, m, label_smoothing=smoothing)
    loss.backward()
    total, count = torch_losses.masked_cross_entropy_sum(x.detach(), t, m, label_smoothing=smoothing)
    return loss.detach().numpy(), total.numpy(), count.numpy(), x.grad.float().numpy()


@functools.partial(jax.jit, static_argnums=3)
def _jax_jitted(logits, targets, mask, smoothing):
    loss, grad = jax.value_and_grad(
        lambda x: jax_losses.masked_cross_entropy(x, targets, mask, label_smoothing=smoothing)
    )(logits)
    total, count = jax_losses.masked_cross_entropy_sum(logits, targets, mask, label_smoothing=smoothing)
    return loss, total, count, grad.astype(jnp.float32)


def _jax(logits, targets, mask, smoothing):
    # Jitted: one compilation per input signature keeps the suite fast. Eager calls take the same
    # code path plus the target check (compared across backends below).
    outputs = _jax_jitted(jnp.asarray(logits), jnp.asarray(targets, jnp.int32), jnp.asarray(mask), smoothing)
    return tuple(np.asarray(o) for o in outputs)


def _reference(logits, targets, mask, smoothing):
    """float64 numpy, from the same (float32 or bfloat16) inputs."""
    x = logits.astype(np.float64)
    shifted = x - x.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    weights = mask.astype(np.float64)
    nll = -np.take_along_axis(logp, np.where(weights != 0, targets, 0)[..., None], -1)[..., 0]
    loss = (1 - smoothing) * nll - smoothing * logp.mean(-1)
    count = weights.sum()
    return (weights * loss).sum() / count if count else 0.0


@settings(max_examples=60)
@given(cross_entropy_inputs())
def test_masked_cross_entropy_values_and_gradients(inputs):
    logits, targets, mask, smoothing = inputs
    t_loss, t_total, t_count, t_grad = _torch(*inputs)
    j_loss, j_total, j_count, j_grad = _jax(*inputs)
    assert t_loss.dtype == j_loss.dtype == np.float32
    np.testing.assert_allclose(t_loss, j_loss, rtol=LOSS.rtol, atol=LOSS.atol)
    np.testing.assert_allclose(t_total, j_total, rtol=LOSS.rtol, atol=LOSS.atol)
    if mask.dtype == np.float32:  # a float sum: the two reduction orders may differ in the last bit
        np.testing.assert_allclose(t_count, j_count, rtol=LOSS.rtol, atol=LOSS.atol)
    else:
        np.testing.assert_array_equal(t_count, j_count)
    np.testing.assert_allclose(t_loss, _reference(*inputs), rtol=LOSS.rtol, atol=LOSS.atol)
    if not mask.any():
        assert t_loss == j_loss == 0.0 and not t_grad.any() and not j_grad.any()
    if logits.dtype == jnp.bfloat16:
        # Both sides compute the gradient in float32 (agreeing to GRADIENT) and round it once to
        # bfloat16; two float32 values a rounding apart may round to neighbouring bfloat16 values,
        # so the rounded gradients agree to one bfloat16 unit (tests/test_losses.py pins, per side,
        # that the bfloat16 gradient is exactly the rounded float32 one).
        np.testing.assert_allclose(t_grad, j_grad, rtol=BF16_ULP, atol=GRADIENT.atol)
    else:
        np.testing.assert_allclose(t_grad, j_grad, rtol=GRADIENT.rtol, atol=GRADIENT.atol)


@pytest.mark.parametrize("bad", [-1, 7, -100])
def test_out_of_range_unmasked_target_raises_the_same_error(bad):
    logits = np.zeros((2, 3, 7), np.float32)
    targets, mask = np.zeros((2, 3), np.int64), np.ones((2, 3), bool)
    targets[1, 2] = bad
    messages = []
    for call in (
        lambda: torch_losses.masked_cross_entropy(torch.tensor(logits), torch.tensor(targets), torch.tensor(mask)),
        lambda: jax_losses.masked_cross_entropy(
            jnp.asarray(logits), jnp.asarray(targets, jnp.int32), jnp.asarray(mask)
        ),
    ):
        with pytest.raises(TargetOutOfRangeError, match=rf"targets\[1, 2\] = {bad} is outside") as error:
            call()
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    assert f"targets[1, 2] = {bad} is outside [0, 7)" in messages[0]


def test_combined_loss_values_and_gradients():
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(4, 9, 13)) * 2).astype(np.float32)
    targets = rng.integers(0, 13, (4, 9))
    mask = rng.random((4, 9)) < 0.7
    targets[~mask] = -100
    values, value_targets = rng.normal(size=4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    weights = {"tokens": 0.7, "value": 2.5}

    def mse(prediction, target):
        return ((prediction - target) ** 2).mean()

    torch_combined = torch_losses.CombinedLoss(
        {"tokens": lambda x, t: torch_losses.masked_cross_entropy(x, *t), "value": mse}, weights
    )
    x, v = torch.tensor(logits, requires_grad=True), torch.tensor(values, requires_grad=True)
    t_total, t_parts = torch_combined(
        {"tokens": x, "value": v},
        {"tokens": (torch.tensor(targets), torch.tensor(mask)), "value": torch.tensor(value_targets)},
    )
    t_total.backward()

    jax_combined = jax_losses.CombinedLoss(
        {"tokens": lambda x, t: jax_losses.masked_cross_entropy(x, *t), "value": mse}, weights
    )
    batch = {"tokens": (jnp.asarray(targets, jnp.int32), jnp.asarray(mask)), "value": jnp.asarray(value_targets)}
    (j_total, j_parts), j_grads = jax.jit(jax.value_and_grad(lambda p, b: jax_combined(p, b), has_aux=True))(
        {"tokens": jnp.asarray(logits), "value": jnp.asarray(values)}, batch
    )

    np.testing.assert_allclose(t_total.detach().numpy(), j_total, rtol=LOSS.rtol, atol=LOSS.atol)
    for name in weights:
        np.testing.assert_allclose(t_parts[name].detach().numpy(), j_parts[name], rtol=LOSS.rtol, atol=LOSS.atol)
    np.testing.assert_allclose(x.grad.numpy(), j_grads["tokens"], rtol=GRADIENT.rtol, atol=GRADIENT.atol)
    np.testing.assert_allclose(v.grad.numpy(), j_grads["value"], rtol=GRADIENT.rtol, atol=GRADIENT.atol)
