"""Each standard layer, transferred by transfer_weights, computes the same values and gradients on both sides.

The round trip (tests/test_porting_transfer.py) shows the copies are exact; this shows the layout
conversions are the right ones: a kernel transposed the wrong way round would copy exactly too.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from ml_patterns_app.porting import compare_forward, compare_gradients, transfer_weights

RNG = np.random.default_rng(0)


def _x(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def _channels_last(x):
    return np.moveaxis(x, 1, -1)


def _bn():
    layer = nn.BatchNorm2d(4)
    with torch.no_grad():
        layer.running_mean.copy_(torch.randn(4))
        layer.running_var.copy_(torch.rand(4) + 0.5)
    return layer


# name -> (torch layer, nnx layer, torch inputs, nnx inputs or None for the same)
CASES = {
    "linear": (lambda: nn.Linear(5, 3), lambda r: nnx.Linear(5, 3, rngs=r), (_x(2, 5),), None),
    "embedding": (lambda: nn.Embedding(7, 4), lambda r: nnx.Embed(7, 4, rngs=r), (RNG.integers(0, 7, (2, 3)),), None),
    "layernorm": (lambda: nn.LayerNorm(6), lambda r: nnx.LayerNorm(6, epsilon=1e-5, rngs=r), (_x(2, 6),), None),
    "rmsnorm": (lambda: nn.RMSNorm(6, eps=1e-6), lambda r: nnx.RMSNorm(6, rngs=r), (_x(2, 6),), None),
    "groupnorm": (
        lambda: nn.GroupNorm(2, 4),
        lambda r: nnx.GroupNorm(4, num_groups=2, epsilon=1e-5, rngs=r),
        (x := _x(2, 4, 5),),
        (_channels_last(x),),
    ),
    "conv1d": (
        lambda: nn.Conv1d(3, 4, 3, padding=1),
        lambda r: nnx.Conv(3, 4, (3,), padding=1, rngs=r),
        (x := _x(2, 3, 7),),
        (_channels_last(x),),
    ),
    "conv2d": (
        lambda: nn.Conv2d(3, 4, (3, 2), stride=2, padding=1),
        lambda r: nnx.Conv(3, 4, (3, 2), strides=2, padding=1, rngs=r),
        (x := _x(2, 3, 8, 6),),
        (_channels_last(x),),
    ),
    "batchnorm": (_bn, lambda r: nnx.BatchNorm(4, epsilon=1e-5, rngs=r), (x := _x(2, 4, 3, 3),), (_channels_last(x),)),
    "self_attention": (
        lambda: nn.MultiheadAttention(6, 2, batch_first=True),
        lambda r: nnx.MultiHeadAttention(num_heads=2, in_features=6, decode=False, rngs=r),
        (x := _x(2, 5, 6), x, x),
        None,
    ),
    "cross_attention": (
        lambda: nn.MultiheadAttention(6, 3, kdim=4, vdim=4, batch_first=True),
        lambda r: nnx.MultiHeadAttention(num_heads=3, in_features=6, in_kv_features=4, decode=False, rngs=r),
        (_x(2, 5, 6), x := _x(2, 3, 4), x),
        None,
    ),
}


def _first(output):
    return output[0] if isinstance(output, tuple) else output  # torch attention returns (values, weights)


def _loss_torch(module, inputs):
    return (_first(module(*inputs)) ** 2).sum()


def _loss_jax(module, inputs):
    return jnp.sum(module(*inputs) ** 2)


@pytest.mark.parametrize("name", CASES)
def test_transferred_layer_agrees_in_values_and_gradients(name):
    make_torch, make_nnx, inputs, nnx_inputs = CASES[name]
    torch.manual_seed(0)
    layer, port = make_torch(), make_nnx(nnx.Rngs(1))
    transfer_weights(layer, port)
    forward = compare_forward(layer, port, inputs, nnx_inputs=nnx_inputs)
    assert forward.passed, forward.format_table()
    assert forward.rows[-1].what == "output"
    # Gradients in training mode (compare_forward ran in eval mode): BatchNorm uses the batch statistics.
    gradients = compare_gradients(layer, port, inputs, _loss_torch, _loss_jax, nnx_batch=nnx_inputs)
    assert gradients.passed, gradients.format_table()
