"""masked_binary_cross_entropy_sum on each backend: the formula, masked rows ignored whatever their
target holds (no NaN in the value or the gradient), the shapes checked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_impl.losses
import torch_impl.losses

LOGITS = np.array([2.0, -1.0, 0.5, 30.0], np.float32)
TARGETS = np.array([1.0, 0.0, 0.0, np.nan], np.float32)  # the last row is masked: its NaN must not leak
MASK = np.array([True, True, True, False])


def expected() -> float:
    z, y = LOGITS[:3].astype(np.float64), TARGETS[:3].astype(np.float64)
    return float(np.sum(np.logaddexp(0.0, z) - y * z))


def test_torch():
    logits = torch.tensor(LOGITS, requires_grad=True)
    total, count = torch_impl.losses.masked_binary_cross_entropy_sum(logits, torch.tensor(TARGETS), torch.tensor(MASK))
    assert total.item() == pytest.approx(expected(), rel=1e-6) and count.item() == 3.0
    total.backward()
    sigmoid = 1 / (1 + np.exp(-LOGITS[:3].astype(np.float64)))
    np.testing.assert_allclose(logits.grad.numpy(), [*(sigmoid - TARGETS[:3]), 0.0], rtol=1e-6, atol=1e-7)


def test_jax():
    def loss(logits):
        return jax_impl.losses.masked_binary_cross_entropy_sum(logits, jnp.asarray(TARGETS), jnp.asarray(MASK))[0]

    total, grad = jax.value_and_grad(loss)(jnp.asarray(LOGITS))
    assert float(total) == pytest.approx(expected(), rel=1e-6)
    sigmoid = 1 / (1 + np.exp(-LOGITS[:3].astype(np.float64)))
    np.testing.assert_allclose(np.asarray(grad), [*(sigmoid - TARGETS[:3]), 0.0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "call",
    [
        lambda: torch_impl.losses.masked_binary_cross_entropy_sum(torch.zeros(3), torch.zeros(2), torch.ones(3)),
        lambda: jax_impl.losses.masked_binary_cross_entropy_sum(jnp.zeros(3), jnp.zeros(2), jnp.ones(3)),
    ],
)
def test_shapes_must_agree(call):
    with pytest.raises(ValueError, match=r"logits \(3,\), targets \(2,\) and weights \(3,\) must have one shape"):
        call()
