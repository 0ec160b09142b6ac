"""A model that is not ours, written in PyTorch, and its Flax NNX port with switchable porting bugs.

A small pre-norm Transformer classifier over padded token sequences (embedding + learned positions,
blocks of LayerNorm -> hand-written attention -> residual, LayerNorm -> GELU MLP -> residual, final
LayerNorm, masked mean pool, linear head). The NNX port names its layers differently on purpose
(``layers`` for ``blocks``, ``query`` for ``q``...): the porting tools pair them by type and order.

``BUGS`` are mistakes people make when porting; ``TransformerPort(bugs={...})`` makes them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx
from torch import nn

VOCAB, LENGTH, DIM, HEADS, CLASSES, DEPTH = 11, 6, 8, 2, 3, 2

# bug -> (the torch module path where compare_forward must localize it, "input" or "output" of it)
BUGS = {
    "layernorm_eps": ("blocks.0.ln1", "output"),  # nnx.LayerNorm's default epsilon 1e-6, torch's 1e-5
    "gelu_tanh": ("blocks.0.mlp.fc2", "input"),  # jax.nn.gelu's default approximate=True
    "kernel_not_transposed": ("blocks.0.attn.v", "output"),  # a hand-written copy of a square kernel
    "attention_scale": ("blocks.0.attn.out", "input"),  # scores / sqrt(DIM), not sqrt(head_dim)
    "dropped_bias": ("blocks.0.mlp.fc2", "output"),  # use_bias=False (transfer refuses; see the tests)
    "mask_inverted": ("blocks.0.attn.out", "input"),  # attends to padding instead of tokens
    "softmax_axis": ("blocks.0.attn.out", "input"),  # softmax over the queries
    "head_split": ("blocks.0.attn.out", "input"),  # [B, L, head_dim, H] instead of [B, L, H, head_dim]
    "pool_with_padding": ("head", "input"),  # mean over every position, padding included
}


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(DIM, DIM) for _ in range(4))

    def forward(self, x, mask):  # x [B, L, D], mask [B, L] bool, True at tokens
        b, length, _ = x.shape

        def heads(t):
            return t.view(b, length, HEADS, DIM // HEADS).transpose(1, 2)  # [B, H, L, hd]

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(DIM // HEADS)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, length, DIM)
        return self.out(mixed)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.attn, self.ln2, self.mlp = nn.LayerNorm(DIM), Attention(), nn.LayerNorm(DIM), MLP()

    def forward(self, x, mask):
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.tok = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Parameter(0.02 * torch.randn(LENGTH, DIM))
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.ln_f, self.head = nn.LayerNorm(DIM), nn.Linear(DIM, CLASSES)
        nn.init.normal_(self.tok.weight, std=0.02)  # GPT-style: small activations make epsilon matter

    def forward(self, tokens, mask):  # tokens [B, L] int64, mask [B, L] bool -> logits [B, CLASSES]
        x = self.tok(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        x = self.ln_f(x)
        weights = mask[..., None].to(x.dtype)
        return self.head((x * weights).sum(1) / weights.sum(1))


class AttentionPort(nnx.Module):
    def __init__(self, bugs, rngs):
        self.query, self.key, self.value, self.proj = (nnx.Linear(DIM, DIM, rngs=rngs) for _ in range(4))
        self.bugs = bugs

    def __call__(self, x, mask):
        b, length, _ = x.shape
        hd = DIM // HEADS

        def heads(t):
            if "head_split" in self.bugs:
                return t.reshape(b, length, hd, HEADS).transpose(0, 3, 1, 2)
            return t.reshape(b, length, HEADS, hd).transpose(0, 2, 1, 3)  # [B, H, L, hd]

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scale = math.sqrt(DIM if "attention_scale" in self.bugs else hd)
        scores = q @ k.transpose(0, 1, 3, 2) / scale
        keep = ~mask if "mask_inverted" in self.bugs else mask
        scores = jnp.where(keep[:, None, None, :], scores, -jnp.inf)
        weights = jax.nn.softmax(scores, axis=-2 if "softmax_axis" in self.bugs else -1)
        return self.proj((weights @ v).transpose(0, 2, 1, 3).reshape(b, length, DIM))


class MLPPort(nnx.Module):
    def __init__(self, bugs, rngs):
        self.dense_in = nnx.Linear(DIM, 4 * DIM, rngs=rngs)
        self.dense_out = nnx.Linear(4 * DIM, DIM, use_bias="dropped_bias" not in bugs, rngs=rngs)
        self.approximate = "gelu_tanh" in bugs

    def __call__(self, x):
        return self.dense_out(jax.nn.gelu(self.dense_in(x), approximate=self.approximate))


class BlockPort(nnx.Module):
    def __init__(self, bugs, rngs):
        eps = 1e-6 if "layernorm_eps" in bugs else 1e-5
        self.norm_attn = nnx.LayerNorm(DIM, epsilon=eps, use_fast_variance=False, rngs=rngs)
        self.attention = AttentionPort(bugs, rngs)
        self.norm_mlp = nnx.LayerNorm(DIM, epsilon=eps, use_fast_variance=False, rngs=rngs)
        self.mlp = MLPPort(bugs, rngs)

    def __call__(self, x, mask):
        x = x + self.attention(self.norm_attn(x), mask)
        return x + self.mlp(self.norm_mlp(x))


class TransformerPort(nnx.Module):
    def __init__(self, bugs=frozenset(), seed: int = 1):
        rngs = nnx.Rngs(seed)
        self.embed = nnx.Embed(VOCAB, DIM, rngs=rngs)
        self.positions = nnx.Param(jnp.zeros((LENGTH, DIM)))
        self.layers = nnx.List([BlockPort(frozenset(bugs), rngs) for _ in range(DEPTH)])
        self.norm = nnx.LayerNorm(DIM, epsilon=1e-5, use_fast_variance=False, rngs=rngs)
        self.classify = nnx.Linear(DIM, CLASSES, rngs=rngs)
        self.pool_all = "pool_with_padding" in bugs

    def __call__(self, tokens, mask):
        x = self.embed(tokens) + self.positions[None, : tokens.shape[1]]
        for layer in self.layers:
            x = layer(x, mask)
        x = self.norm(x)
        weights = jnp.ones_like(mask, x.dtype) if self.pool_all else mask.astype(x.dtype)
        return self.classify((x * weights[..., None]).sum(1) / weights.sum(1)[..., None])


def port(torch_model: Transformer, bugs=frozenset()) -> TransformerPort:
    """The NNX port with the torch weights, the way its author copied them."""
    from ml_patterns_app.porting import transfer_weights

    model = TransformerPort(bugs)
    transfer_weights(torch_model, model, ignore=ignored(bugs))  # what the port's author had to ignore
    if "kernel_not_transposed" in bugs:  # as a hand-written copy does: the square shape fits either way
        model.layers[0].attention.value.kernel.set_value(
            jnp.asarray(torch_model.blocks[0].attn.v.weight.detach().numpy())
        )
    return model


def ignored(bugs) -> list[str]:
    """The torch tensors a port with ``bugs`` has no place for (the comparisons must be told too)."""
    return [f"blocks.{i}.mlp.fc2.bias" for i in range(DEPTH)] if "dropped_bias" in bugs else []


def batch(seed: int, size: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens [B, L] int64, mask [B, L] bool, labels [B] int64); sequence b has LENGTH - b % 3 tokens."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, (size, LENGTH))
    mask = np.arange(LENGTH)[None, :] < (LENGTH - np.arange(size) % 3)[:, None]
    return np.where(mask, tokens, 0), mask, rng.integers(0, CLASSES, size)


def loss_torch(model, batch):
    tokens, mask, labels = batch
    return nn.functional.cross_entropy(model(tokens, mask), labels)


def loss_jax(model, batch):
    tokens, mask, labels = batch
    return optax.softmax_cross_entropy_with_integer_labels(model(tokens, mask), labels).mean()
