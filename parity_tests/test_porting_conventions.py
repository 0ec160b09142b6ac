"""The catalogue, continued: conventions that differ between the two frameworks, each localized or
explained by the toolkit (broadcast inputs, a fused q/k/v projection, Embedding's padding_idx,
AdamW's defaults)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from torch import nn

from ml_patterns_app.porting import (
    PortingError,
    Rule,
    TensorMap,
    compare_forward,
    compare_gradients,
    compare_optimizers,
    transfer_weights,
)

TOKENS = np.array([[3, 1, 4, 0], [2, 5, 0, 0]])


class Positions(nn.Module):
    """Token plus position embeddings, the positions a [1, L] buffer slice as in Hugging Face's models."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.tokens, self.positions = nn.Embedding(6, 4, padding_idx=0), nn.Embedding(8, 4)
        self.register_buffer("ids", torch.arange(8)[None], persistent=False)

    def forward(self, tokens):
        return self.tokens(tokens) + self.positions(self.ids[:, : tokens.shape[1]])


class PositionsPort(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.tokens, self.positions = nnx.Embed(6, 4, rngs=rngs), nnx.Embed(8, 4, rngs=rngs)

    def __call__(self, tokens):
        ids = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)  # [B, L]
        return self.tokens(tokens) + self.positions(ids)


def test_inputs_equal_after_broadcasting_agree_and_say_so():
    model, port = Positions(), PositionsPort()
    transfer_weights(model, port)
    report = compare_forward(model, port, TOKENS)
    assert report.passed, report.format_table()
    row = next(r for r in report.rows if r.torch_name == "positions" and r.what == "input")
    assert (row.torch_shape, row.nnx_shape) == ((1, 4), (2, 4))
    assert "equal after broadcasting" in row.note


def test_padding_idx_is_noted_and_explains_the_one_gradient_that_differs():
    model, port = Positions(), PositionsPort()
    table = str(transfer_weights(model, port))
    assert "padding_idx=0: torch gives row 0 no gradient" in table
    report = compare_gradients(model, port, TOKENS, lambda m, t: (m(t) ** 2).sum(), lambda m, t: (m(t) ** 2).sum())
    assert not report.passed
    assert [row.nnx_name for row in report.rows if not row.passed] == ["tokens.embedding"]
    assert "Layer note for tokens.embedding: padding_idx=0" in report.where


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v, self.out = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, x):
        weights = (self.q(x) @ self.k(x).transpose(-2, -1) / 8**0.5).softmax(-1)
        return self.out(weights @ self.v(x))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn, self.ffn = Attention(), nn.Linear(8, 8)

    def forward(self, x):
        return self.ffn(x + self.attn(x))


class FusedAttention(nnx.Module):
    def __init__(self, rngs):
        self.qkv, self.out = nnx.Linear(8, 24, rngs=rngs), nnx.Linear(8, 8, rngs=rngs)

    def __call__(self, x):
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        weights = jax.nn.softmax(q @ k.swapaxes(-2, -1) / 8**0.5, axis=-1)
        return self.out(weights @ v)


class BlockPort(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.attn, self.ffn = FusedAttention(rngs), nnx.Linear(8, 8, rngs=rngs)

    def __call__(self, x):
        return self.ffn(x + self.attn(x))


def _fuse(q, k, v, bq, bk, bv):  # torch [out, in] x 3 -> one [in, 3 out] kernel
    return np.concatenate([q, k, v]).T, np.concatenate([bq, bk, bv])


def _unfuse(kernel, bias):
    return (*np.split(kernel.T, 3), *np.split(bias, 3))


FUSED_QKV = Rule(
    "FusedAttention",
    Attention,
    FusedAttention,
    lambda t, n: [
        TensorMap(
            ("q.weight", "k.weight", "v.weight", "q.bias", "k.bias", "v.bias"),
            ("qkv.kernel", "qkv.bias"),
            _fuse,
            _unfuse,
            "concatenate q/k/v, transpose",
        ),
        TensorMap(("out.weight",), ("out.kernel",), lambda w: (w.T,), lambda k: (k.T,), "transpose"),
        TensorMap(("out.bias",), ("out.bias",)),
    ],
)


def test_a_fused_qkv_is_localized_at_its_container_and_a_rule_ports_it():
    with pytest.raises(PortingError) as error:
        transfer_weights(Block(), BlockPort())
    message = str(error.value)
    assert "attn: 4 Linear in torch, 2 in nnx; torch Linear without a counterpart: attn.q, attn.k, attn.v" in message
    assert "nnx Linear without a counterpart: attn.qkv" in message
    assert "ffn" not in message and "attn.out" not in message  # the layers around it still pair
    model, port, x = Block(), BlockPort(), np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
    transfer_weights(model, port, rules=[FUSED_QKV])
    report = compare_forward(model, port, x, rules=[FUSED_QKV])
    assert report.passed, report.format_table()


def _adamw(params):
    return torch.optim.AdamW(params, lr=1e-3)


@pytest.mark.standard_promotion("optax's Adam mixes its int32 step count with Python floats")
def test_adamw_defaults_that_differ_are_named_with_the_fix():
    report = compare_optimizers(_adamw, optax.adamw(1e-3))  # weight decay 0.01 in torch, 1e-4 in optax
    assert not report.passed and report.first.label.startswith("step 2")  # the decay acts from step 2 on
    assert "weight decay: torch 0.01 vs optax 0.0001" in report.where
    assert "optax.adamw(learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-08, weight_decay=0.01)" in report.where
    fixed = compare_optimizers(_adamw, optax.adamw(learning_rate=0.001, b1=0.9, b2=0.999, eps=1e-08, weight_decay=0.01))
    assert fixed.passed, fixed.format_table()
