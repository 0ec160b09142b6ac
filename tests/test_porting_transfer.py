"""transfer_weights: every standard layer, both directions bit-exact, the dry run, one error for all."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from ml_patterns_app.porting import PortingError, Rule, TensorMap, compare_forward, rules, transfer_weights


class Zoo(nn.Module):
    """One of each standard layer, plus a loose parameter."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(7, 6)
        self.offset = nn.Parameter(torch.randn(6))
        self.ln = nn.LayerNorm(6)
        self.rms = nn.RMSNorm(6, eps=1e-6)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
        self.cross = nn.MultiheadAttention(6, 3, kdim=4, vdim=4, batch_first=True)  # q/k/v_proj_weight
        self.conv1 = nn.Conv1d(6, 4, 3)
        self.group = nn.GroupNorm(2, 4)
        self.conv2 = nn.Conv2d(4, 5, (3, 2), padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)
        with torch.no_grad():  # non-trivial values everywhere, running statistics included
            for tensor in self.parameters():
                tensor.copy_(torch.randn_like(tensor))
            self.bn.running_mean.copy_(torch.randn(5))
            self.bn.running_var.copy_(torch.rand(5) + 0.5)


class ZooPort(nnx.Module):
    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.embed = nnx.Embed(7, 6, rngs=rngs)
        self.shift = nnx.Param(jnp.zeros(6))
        self.norm = nnx.LayerNorm(6, epsilon=1e-5, rngs=rngs)
        self.rms = nnx.RMSNorm(6, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads=2, in_features=6, decode=False, rngs=rngs)
        self.cross = nnx.MultiHeadAttention(num_heads=3, in_features=6, in_kv_features=4, decode=False, rngs=rngs)
        self.conv_a = nnx.Conv(6, 4, (3,), padding="VALID", rngs=rngs)
        self.group = nnx.GroupNorm(4, num_groups=2, epsilon=1e-5, rngs=rngs)
        self.conv_b = nnx.Conv(4, 5, (3, 2), padding=1, rngs=rngs)
        self.bn = nnx.BatchNorm(5, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.out = nnx.Linear(5, 3, rngs=rngs)


def _torch_state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_round_trip_torch_nnx_torch_is_bit_exact():
    source, target, port = Zoo(seed=0), Zoo(seed=1), ZooPort()
    before = _torch_state(target)
    assert any(not torch.equal(before[k], v) for k, v in _torch_state(source).items())
    transfer_weights(source, port)
    transfer_weights(target, port, direction="to_torch")
    after = _torch_state(target)
    for name, tensor in _torch_state(source).items():
        assert torch.equal(after[name], tensor), name
    # and the NNX side holds exactly the torch values, in its layout
    np.testing.assert_array_equal(np.asarray(port.out.kernel.get_value()), source.fc.weight.detach().numpy().T)
    np.testing.assert_array_equal(np.asarray(port.bn.var.get_value()), source.bn.running_var.numpy())


def test_dry_run_lists_every_pair_and_writes_nothing():
    source, port = Zoo(seed=0), ZooPort()
    kernel = np.asarray(port.out.kernel.get_value()).copy()
    table = str(transfer_weights(source, port, dry_run=True))
    np.testing.assert_array_equal(np.asarray(port.out.kernel.get_value()), kernel)
    for line in (
        "attn.in_proj_weight",
        "attention.query.kernel, attention.key.kernel, attention.value.kernel",
        "cross.k_proj_weight",
        "conv2.weight",
        "OIHW->HWIO",
        "offset",
        "shift",
        "bn.running_var",
        "skipped: torch-only counter",
    ):
        assert line in table, line
    assert "problem" not in table


def test_hyperparameters_that_differ_are_reported_not_converted():
    source, port = Zoo(seed=0), ZooPort()
    port.bn.momentum = 0.99
    table = str(transfer_weights(source, port))
    assert "momentum: torch 0.1 (weight of the new batch) vs nnx 0.99" in table
    assert "equivalent nnx momentum is 0.9" in table
    assert port.bn.momentum == 0.99


def test_one_error_lists_every_unmatched_and_mismatched_tensor():
    class Torch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 5), nn.LayerNorm(5)

    class Port(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.a = nnx.Linear(3, 4, use_bias=False, rngs=rngs)  # bias dropped
            self.b = nnx.Linear(4, 6, rngs=rngs)  # wrong width
            self.extra = nnx.Linear(2, 2, rngs=rngs)  # no torch counterpart

    port = Port()
    kernel = np.asarray(port.b.kernel.get_value()).copy()
    with pytest.raises(PortingError, match="tensor") as error:
        transfer_weights(Torch(), port)
    message = str(error.value)
    for expected in (
        "torch a.bias [4]: no counterpart",
        "b.weight -> b.kernel: shape mismatch",
        "b.bias -> b.bias: shape mismatch",
        "nnx Linear without a counterpart: extra",
        "1 LayerNorm in torch, 0 in nnx",
        "torch c.weight",
        "nnx extra.kernel",
    ):
        assert expected in message, expected
    np.testing.assert_array_equal(np.asarray(port.b.kernel.get_value()), kernel)  # nothing written


def test_ignore_leaves_tensors_alone_and_must_name_something():
    class Torch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)

    class Port(nnx.Module):
        def __init__(self):
            self.a = nnx.Linear(3, 4, use_bias=False, rngs=nnx.Rngs(0))

    transfer_weights(Torch(), Port(), ignore=["a.bias"])
    with pytest.raises(PortingError, match="ignore entry 'a.gamma' names no tensor"):
        transfer_weights(Torch(), Port(), ignore=["a.bias", "a.gamma"])
    with pytest.raises(ValueError, match="direction must be 'to_nnx' or 'to_torch'"):
        transfer_weights(Torch(), Port(), direction="sideways")


class LowRank(nn.Module):
    """A custom layer: y = x @ v.T @ u.T, with u [out, r] and v [r, in]."""

    def __init__(self):
        super().__init__()
        self.u, self.v = nn.Parameter(torch.randn(5, 2)), nn.Parameter(torch.randn(2, 3))

    def forward(self, x):
        return x @ self.v.T @ self.u.T


class LowRankPort(nnx.Module):
    def __init__(self):
        self.down, self.up = nnx.Param(jnp.zeros((3, 2))), nnx.Param(jnp.zeros((2, 5)))

    def __call__(self, x):
        return x @ self.down[...] @ self.up[...]


LOW_RANK = Rule(
    "LowRank",
    LowRank,
    LowRankPort,
    lambda t, n: [
        TensorMap(("v",), ("down",), lambda v: (v.T,), lambda d: (d.T,), "transpose"),
        TensorMap(("u",), ("up",), lambda u: (u.T,), lambda w: (w.T,), "transpose"),
    ],
)


def test_a_user_rule_maps_a_custom_layer(monkeypatch):
    torch.manual_seed(0)
    layer, port = LowRank(), LowRankPort()
    with pytest.raises(PortingError, match="shape mismatch"):  # loose parameters, paired as they are
        transfer_weights(layer, port)
    transfer_weights(layer, port, rules=[LOW_RANK])
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    with pytest.raises(PortingError, match="shape mismatch"):  # no verdict on a mapping that does not hold
        compare_forward(layer, port, x)
    assert compare_forward(layer, port, x, rules=[LOW_RANK]).passed
    monkeypatch.setattr(rules, "_REGISTRY", [])
    rules.register_rule(LOW_RANK)
    assert "LowRank" not in str(transfer_weights(layer, LowRankPort(), dry_run=True).problems)


class _TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


class _TwoLayersPort(nnx.Module):
    """The same layers defined in the other order (same shapes), named ``names`` (first, second)."""

    def __init__(self, names):
        rngs = nnx.Rngs(0)
        self.names = names
        for name in reversed(names):
            setattr(self, name, nnx.Linear(4, 4, rngs=rngs))

    def __call__(self, x):
        first, second = (getattr(self, name) for name in self.names)
        return second(jnp.tanh(first(x)))


def test_layers_of_the_same_name_pair_whatever_their_order():
    model, port, x = _TwoLayers(), _TwoLayersPort(("first", "second")), np.ones((2, 4), np.float32)
    weight_map = transfer_weights(model, port)
    assert [(p.torch.path, p.nnx.path, p.how) for p in weight_map.pairs] == [
        ("first", "first", "name"),
        ("second", "second", "name"),
    ]
    assert compare_forward(model, port, x).passed


def test_pairs_override_the_definition_order():
    model, port, x = _TwoLayers(), _TwoLayersPort(("a", "b")), np.ones((2, 4), np.float32)
    transfer_weights(model, port)  # other names: in order, first with b (defined first): wrong
    report = compare_forward(model, port, x)
    assert not report.passed and report.first.torch_name == "first"
    explicit = {"first": "a", "second": "b"}
    transfer_weights(model, port, pairs=explicit)
    assert compare_forward(model, port, x, pairs=explicit).passed
