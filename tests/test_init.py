"""Weight init, each backend alone: which parameters get which fill, in place, deterministically.

The distributions themselves (bounds, mean, std, torch against JAX) are parity_tests/test_init.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch import nn

from jax_impl import init as jax_init
from torch_impl import init as torch_init


def _torch_model() -> nn.Module:
    return nn.Sequential(
        nn.Embedding(50, 16, padding_idx=0),
        nn.Linear(16, 32),
        nn.LayerNorm(32),
        nn.Linear(32, 8, bias=False),
        nn.LayerNorm(8, bias=False),
        nn.LayerNorm(8, elementwise_affine=False),
    )


def test_torch_init_weights_overwrites_every_parameter():
    model = _torch_model()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(5.0)
    model.apply(torch_init.init_weights)
    embedding, linear, norm, linear_nobias, norm_nobias, _ = model
    bound = np.sqrt(6 / (16 + 32))
    assert linear.weight.abs().max() <= bound and linear.weight.std() > 0.5 * bound / np.sqrt(3)
    assert torch.count_nonzero(linear.bias) == 0
    assert linear_nobias.weight.abs().max() <= np.sqrt(6 / (32 + 8))
    assert torch.equal(norm.weight, torch.ones(32)) and torch.count_nonzero(norm.bias) == 0
    assert torch.equal(norm_nobias.weight, torch.ones(8))
    assert torch.count_nonzero(embedding.weight[0]) == 0  # padding_idx keeps torch's zero row
    assert torch.count_nonzero(embedding.weight[1:]) == embedding.weight[1:].numel()
    assert embedding.weight.abs().max() < 0.02 * 6


def test_torch_init_weights_is_deterministic_under_a_seed():
    torch.manual_seed(3)
    first = _torch_model().apply(torch_init.init_weights).state_dict()
    torch.manual_seed(3)
    second = _torch_model().apply(torch_init.init_weights).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


class _JaxModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embedding = nnx.Embed(50, 16, rngs=rngs)
        self.blocks = nnx.List(
            [nnx.Linear(16, 32, rngs=rngs), nnx.LayerNorm(32, rngs=rngs), nnx.Linear(32, 8, use_bias=False, rngs=rngs)]
        )
        self.norm_nobias = nnx.LayerNorm(8, use_bias=False, rngs=rngs)


def test_jax_init_weights_overwrites_every_parameter_including_nested_ones():
    model = _JaxModel(nnx.Rngs(0))
    for _, variable in nnx.iter_graph(model):
        if isinstance(variable, nnx.Param):
            variable[...] = jnp.full(variable[...].shape, 5.0)
    jax_init.init_weights(model, nnx.Rngs(1))
    linear, norm, linear_nobias = model.blocks
    bound = np.sqrt(6 / (16 + 32))
    kernel = np.asarray(linear.kernel[...])
    assert np.abs(kernel).max() <= bound and kernel.std() > 0.5 * bound / np.sqrt(3)
    assert not np.asarray(linear.bias[...]).any()
    assert np.abs(np.asarray(linear_nobias.kernel[...])).max() <= np.sqrt(6 / (32 + 8))
    np.testing.assert_array_equal(norm.scale[...], np.ones(32))
    assert not np.asarray(norm.bias[...]).any()
    np.testing.assert_array_equal(model.norm_nobias.scale[...], np.ones(8))
    embedding = np.asarray(model.embedding.embedding[...])
    assert np.count_nonzero(embedding) == embedding.size and np.abs(embedding).max() < 0.02 * 6


def test_jax_init_weights_is_deterministic_in_its_rngs():
    def kernel(seed):
        model = _JaxModel(nnx.Rngs(0))
        jax_init.init_weights(model, nnx.Rngs(seed))
        return np.asarray(model.blocks[0].kernel[...])

    np.testing.assert_array_equal(kernel(7), kernel(7))
    assert not np.array_equal(kernel(7), kernel(8))


def test_jax_initializer_constants_build_layers_with_the_scheme():
    rngs = nnx.Rngs(0)
    linear = nnx.Linear(16, 32, kernel_init=jax_init.LINEAR_KERNEL_INIT, bias_init=jax_init.ZEROS_INIT, rngs=rngs)
    embed = nnx.Embed(50, 16, embedding_init=jax_init.EMBEDDING_INIT, rngs=rngs)
    assert np.abs(np.asarray(linear.kernel[...])).max() <= np.sqrt(6 / 48)
    assert not np.asarray(linear.bias[...]).any()
    assert jax.numpy.abs(embed.embedding[...]).max() < 0.02 * 6
