"""Linen layers inside an ``nnx.bridge.ToNNX`` wrapper: conv, batch and group norm, attention and dense
layers, recognized by their variable names and converted by the torch layers' rules, both ways."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch
from flax import linen, nnx
from torch import nn

from ml_patterns_app.porting import compare_forward, compare_gradients, transfer_weights


class CNN(linen.Module):  # automatic names: Conv_0, BatchNorm_0...
    @linen.compact
    def __call__(self, x):
        x = linen.Conv(4, (3, 3), padding=1)(x)
        x = linen.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5)(x)
        x = linen.relu(x)
        x = linen.GroupNorm(num_groups=2, epsilon=1e-5)(x)
        x = x.reshape(x.shape[0], -1, 4)
        x = linen.MultiHeadDotProductAttention(num_heads=2, qkv_features=4)(x, x)
        return linen.Dense(3)(x.mean(1))


class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


class TorchCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn, self.gn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.GroupNorm(2, 4)
        self.mha, self.fc = MHA(), nn.Linear(4, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        x = self.gn(torch.relu(self.bn(self.conv(x))))
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 4)
        return self.fc(self.mha(x).mean(1))


X = np.random.default_rng(0).normal(size=(2, 3, 5, 5)).astype(np.float32)  # NCHW; the linen model takes NHWC


def _pair():
    model = TorchCNN().eval()
    port = nnx.bridge.ToNNX(CNN(), rngs=nnx.Rngs(0)).lazy_init(jnp.asarray(np.moveaxis(X, 1, -1)))
    return model, port


def test_linen_layers_transfer_without_a_rule_and_agree_in_values_and_gradients():
    model, port = _pair()
    table = str(transfer_weights(model, port))
    for line in ("OIHW->HWIO", "BatchNorm_0.var", "MultiHeadDotProductAttention_0.query.kernel", "GroupNorm_0.scale"):
        assert line in table, line
    forward = compare_forward(model, port, X, nnx_inputs=np.moveaxis(X, 1, -1))
    assert forward.passed, forward.format_table()
    assert {row.nnx_name for row in forward.rows} >= {"Conv_0", "BatchNorm_0", "GroupNorm_0", "Dense_0"}
    gradients = compare_gradients(
        model, port, X, lambda m, x: m(x).sum(), lambda m, x: m(x).sum(), nnx_batch=np.moveaxis(X, 1, -1)
    )
    assert gradients.passed, gradients.format_table()


def test_linen_weights_go_back_to_torch_bit_for_bit():
    source, port = _pair()
    transfer_weights(source, port)
    target = TorchCNN()
    with torch.no_grad():
        for tensor in target.parameters():
            tensor.add_(1.0)
    transfer_weights(target, port, direction="to_torch")
    for (name, want), got in zip(source.state_dict().items(), target.state_dict().values()):
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(want, got), name
