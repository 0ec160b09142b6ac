"""Weight init: the same distributions on both sides. The RNGs differ, so parity is statistical.

Each check is a test a correct init passes with overwhelming probability, at fixed seeds (so it is
deterministic), and a wrong scheme fails by a wide margin: for n ~ 5e5 draws, a std off by 1% is 7
standard errors away, and the Kolmogorov-Smirnov critical distance at alpha = 1e-3 is 0.4%.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from jax_impl import init as jax_init
from torch_impl import init as torch_init

IN, OUT = 512, 1024  # Linear: 524,288 weights
VOCAB, DIM = 2048, 256  # Embedding: 524,288 weights
KS_ALPHA = 1e-3


def _torch_linear() -> np.ndarray:
    torch.manual_seed(0)
    layer = nn.Linear(IN, OUT)
    layer.apply(torch_init.init_weights)
    assert not layer.bias.detach().numpy().any()
    return layer.weight.detach().numpy().T  # [in, out], the JAX layout (xavier is symmetric anyway)


def _jax_linear() -> np.ndarray:
    layer = nnx.Linear(IN, OUT, rngs=nnx.Rngs(0))
    jax_init.init_weights(layer, nnx.Rngs(1))
    assert not np.asarray(layer.bias[...]).any()
    return np.asarray(layer.kernel[...])


def _torch_embedding() -> np.ndarray:
    torch.manual_seed(0)
    layer = nn.Embedding(VOCAB, DIM)
    layer.apply(torch_init.init_weights)
    return layer.weight.detach().numpy()


def _jax_embedding() -> np.ndarray:
    layer = nnx.Embed(VOCAB, DIM, rngs=nnx.Rngs(0))
    jax_init.init_weights(layer, nnx.Rngs(1))
    return np.asarray(layer.embedding[...])


def _ks_critical(n: int, m: int) -> float:
    return math.sqrt(-math.log(KS_ALPHA / 2) / 2) * math.sqrt((n + m) / (n * m))


def _ks_two_sample(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.sort(a.ravel()), np.sort(b.ravel())
    grid = np.concatenate([a, b])
    return float(
        np.abs(np.searchsorted(a, grid, side="right") / a.size - np.searchsorted(b, grid, side="right") / b.size).max()
    )


def _ks_one_sample(sample: np.ndarray, cdf) -> float:
    x = np.sort(sample.ravel().astype(np.float64))
    n = x.size
    f = cdf(x)
    return float(max((np.arange(1, n + 1) / n - f).max(), (f - np.arange(n) / n).max()))


@pytest.mark.parametrize("make", [_torch_linear, _jax_linear], ids=["torch", "jax"])
def test_linear_weights_are_xavier_uniform(make):
    w = make().astype(np.float64)
    n, bound = w.size, math.sqrt(6 / (IN + OUT))
    std = bound / math.sqrt(3)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.999 * bound
    assert abs(w.mean()) < 5 * std / math.sqrt(n)
    # The sample std's standard error for a uniform (kurtosis 9/5): std * sqrt((9/5 - 1) / (4 n)).
    assert abs(w.std() - std) < 5 * std * math.sqrt(0.8 / (4 * n))
    assert _ks_one_sample(w, lambda x: (x + bound) / (2 * bound)) < _ks_critical(n, 10**12)


@pytest.mark.parametrize("make", [_torch_embedding, _jax_embedding], ids=["torch", "jax"])
def test_embeddings_are_normal_with_std_0_02(make):
    w = make().astype(np.float64)
    n, std = w.size, torch_init.EMBEDDING_STD
    assert jax_init.EMBEDDING_STD == std
    assert abs(w.mean()) < 5 * std / math.sqrt(n)
    assert abs(w.std() - std) < 5 * std / math.sqrt(2 * n)
    normal_cdf = lambda x: torch.special.ndtr(torch.from_numpy(x / std)).numpy()  # noqa: E731
    assert _ks_one_sample(w, normal_cdf) < _ks_critical(n, 10**12)


@pytest.mark.parametrize(
    ("torch_make", "jax_make"),
    [(_torch_linear, _jax_linear), (_torch_embedding, _jax_embedding)],
    ids=["linear", "embedding"],
)
def test_torch_and_jax_draw_from_the_same_distribution(torch_make, jax_make):
    t, j = torch_make(), jax_make()
    assert t.shape == j.shape and t.dtype == j.dtype == np.float32
    assert not np.array_equal(t, j)  # different RNGs: equal arrays would mean a copied tensor
    assert _ks_two_sample(t, j) < _ks_critical(t.size, j.size)


def test_layer_norms_are_ones_and_zeros_on_both_sides():
    torch_norm = nn.LayerNorm(64)
    with torch.no_grad():
        torch_norm.weight.uniform_()
        torch_norm.bias.uniform_()
    torch_norm.apply(torch_init.init_weights)
    jax_norm = nnx.LayerNorm(64, rngs=nnx.Rngs(0))
    jax_norm.scale[...] = jax_norm.scale[...] * 3.0
    jax_norm.bias[...] = jax_norm.bias[...] + 3.0
    jax_init.init_weights(jax_norm, nnx.Rngs(0))
    for scale, bias in (
        (torch_norm.weight.detach().numpy(), torch_norm.bias.detach().numpy()),
        (np.asarray(jax_norm.scale[...]), np.asarray(jax_norm.bias[...])),
    ):
        np.testing.assert_array_equal(scale, np.ones(64, np.float32))
        np.testing.assert_array_equal(bias, np.zeros(64, np.float32))
