"""Attention's fast paths against the written-out reference, values and gradients, float32.

torch runs ``F.scaled_dot_product_attention`` (``Attention(fused=True)``, the default); JAX runs it
written out (``jax.nn.dot_product_attention`` is slower under XLA:CPU: docs/PERFORMANCE.md).
Both are held to torch's ``reference_attention`` (``fused=False``) with copied weights, on masks
with padding: the encoder's key mask ``[B, 1, L]``, the decoder's causal one ``[B, L, L]``, and a
row with no key at all, which must stay finite (a uniform average) as the reference has it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl.molecules.models as jax_models
import jax_impl.state
import torch_impl.molecules.models as torch_models
import torch_impl.state
from parity_tests import tolerances

B, L, D, H = 4, 12, 32, 4
LENGTHS = (12, 7, 3, 1)


def masks(kind: str) -> np.ndarray:
    keys = np.arange(L)[None, :] < np.array(LENGTHS)[:, None]  # [B, L]
    if kind == "padding":
        return keys[:, None, :]
    if kind == "causal":
        return keys[:, None, :] & np.tri(L, dtype=bool)[None]
    if kind == "no key":  # batch row 2 sees no key at all
        mask = np.repeat(keys[:, None, :], L, axis=1)
        mask[2] = False
        return mask
    raise ValueError(kind)


MASKS = ("padding", "causal", "no key")


def inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, L, D), dtype=np.float32), rng.standard_normal((B, L, D), dtype=np.float32)


def torch_run(module: torch.nn.Module, x: np.ndarray, mask: np.ndarray, cotangent: np.ndarray) -> dict:
    """Output, and the gradients of ``sum(output * cotangent)`` for the input and every parameter."""
    module.zero_grad()
    xt = torch.tensor(x, requires_grad=True)
    out = module(xt, torch.tensor(mask))
    (out * torch.tensor(cotangent)).sum().backward()
    grads = {name: p.grad.numpy().copy() for name, p in module.named_parameters()}
    return {"out": out.detach().numpy(), "x": xt.grad.numpy(), **grads}


def assert_close(actual: dict, expected: dict) -> None:
    for key, value in expected.items():
        tol = tolerances.FORWARD if key == "out" else tolerances.GRADIENT
        np.testing.assert_allclose(actual[key], value, rtol=tol.rtol, atol=tol.atol, err_msg=key)


def torch_pair(dropout: float = 0.0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    fused = torch_models.Attention(D, H, dropout)
    reference = torch_models.Attention(D, H, dropout, fused=False)
    reference.load_state_dict(fused.state_dict())
    return fused, reference


@pytest.mark.parametrize("kind", MASKS)
def test_torch_fused_matches_the_reference(kind):
    fused, reference = torch_pair()
    x, cotangent = inputs()
    if kind == "no key":
        # A real, explained difference, on a row the models never produce (BOS is always a real key,
        # and collate refuses empty records): a keyless row's output is the same uniform average on
        # both paths, but the reference's masked_fill gives its scores no gradient, while the fused
        # kernel's additive bias passes the softmax's gradient through to q and k. The values are
        # compared on every row (here and in the test below); gradients with that row's cotangent 0.
        cotangent[2] = 0.0
    expected = torch_run(reference, x, masks(kind), cotangent)
    actual = torch_run(fused, x, masks(kind), cotangent)
    assert all(np.isfinite(v).all() for v in actual.values())
    assert_close(actual, expected)


def test_a_row_without_keys_averages_every_value_uniformly():
    fused, _ = torch_pair()
    x, cotangent = inputs()
    mask = masks("no key")
    out = torch_run(fused, x, mask, cotangent)["out"]
    with torch.no_grad():
        v = fused.v_proj(torch.tensor(x[2])).numpy()  # [L, D]
        expected = fused.out_proj(torch.tensor(v.mean(0))).numpy()
    np.testing.assert_allclose(out[2], np.broadcast_to(expected, (L, D)), rtol=0, atol=tolerances.FORWARD.atol)


def jax_run(module: nnx.Module, x: np.ndarray, mask: np.ndarray, cotangent: np.ndarray) -> dict:
    graph, params, rest = nnx.split(module, nnx.Param, ...)

    def loss(params, x):
        return jnp.sum(nnx.merge(graph, params, rest)(x, jnp.asarray(mask)) * cotangent)

    out = nnx.merge(graph, params, rest)(jnp.asarray(x), jnp.asarray(mask))
    param_grads, x_grad = jax.grad(loss, argnums=(0, 1))(params, jnp.asarray(x))
    return {"out": np.asarray(out), "x": np.asarray(x_grad), **jax_impl.state.to_numpy(module, param_grads)}


@pytest.mark.parametrize("kind", MASKS)
def test_jax_matches_the_torch_reference(kind):
    _, reference = torch_pair()
    module = jax_models.Attention(D, H, 0.0, rngs=nnx.Rngs(0))
    jax_impl.state.from_numpy(module, torch_impl.state.to_numpy(reference))
    x, cotangent = inputs(1)
    assert_close(jax_run(module, x, masks(kind), cotangent), torch_run(reference, x, masks(kind), cotangent))


@pytest.mark.parametrize("kind", MASKS)
def test_jax_path_matches_jax_nn_dot_product_attention(kind):
    """What the JAX path would be swapped for: the same mask semantics, values and gradients."""
    rng = np.random.default_rng(2)
    q, k, v, cotangent = (jnp.asarray(rng.standard_normal((B, L, H, D // H), dtype=np.float32)) for _ in range(4))
    mask = jnp.asarray(masks(kind))
    scale = (D // H) ** -0.5

    def ours(q, k, v):  # [B, L, H, hd] in and out, as the library's
        heads_first = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
        return jax_models.reference_attention(*heads_first, mask, scale, lambda w: w).transpose(0, 2, 1, 3)

    def library(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale)

    np.testing.assert_allclose(ours(q, k, v), library(q, k, v), rtol=0, atol=tolerances.FORWARD.atol)
    grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cotangent), argnums=(0, 1, 2))(q, k, v) for f in (ours, library)]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=tolerances.GRADIENT.rtol, atol=tolerances.GRADIENT.atol)


def test_torch_fused_dropout_only_in_training_and_unbiased():
    """Eval mode ignores the dropout rate (exactly the reference); train mode drops attention
    weights, and the mean over many draws is the eval output (dropout rescales by 1 / (1 - p))."""
    fused, reference = torch_pair(dropout=0.5)
    x, cotangent = inputs()
    mask = masks("padding")
    fused.eval()
    reference.eval()
    assert_close(torch_run(fused, x, mask, cotangent), torch_run(reference, x, mask, cotangent))
    expected = torch_run(fused, x, mask, cotangent)["out"]
    fused.train()
    torch.manual_seed(1)
    with torch.no_grad():
        draws = np.stack([fused(torch.tensor(x), torch.tensor(mask)).numpy() for _ in range(400)])
    assert np.abs(draws[0] - expected).max() > 0.1  # dropout is on
    # Measured: the mean of 400 draws has a standard error <= 0.03 per element (max deviation
    # 0.056 over 1,536 elements); dropout without the 1 / (1 - p) rescaling would be off by 0.41.
    assert np.abs(draws.mean(0) - expected).max() < 0.2


def test_canonical_weight_names_are_unchanged():
    """The fast paths renamed nothing: the canonical weight names of both sides are the same."""
    module = jax_models.Attention(D, H, 0.0, rngs=nnx.Rngs(0))
    names = {f"{p}.{leaf}" for p in ("q_proj", "k_proj", "v_proj", "out_proj") for leaf in ("weight", "bias")}
    assert set(jax_impl.state.to_numpy(module)) == set(torch_impl.state.to_numpy(torch_pair()[0])) == names
