"""No verdict without evidence: nothing compared, tensors left unmatched, or an object that is not an
NNX module fails or is refused, naming what is missing; a report says how much it compared."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import linen, nnx
from torch import nn

from ml_patterns_app.porting import (
    PortingError,
    compare_forward,
    compare_gradients,
    compare_optimizers,
    compare_training,
    transfer_weights,
)

X = np.ones((2, 4), np.float32)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class Port(nnx.Module):
    def __init__(self, second: bool = True):
        rngs = nnx.Rngs(0)
        self.fc1 = nnx.Linear(4, 4, rngs=rngs)
        self.fc2 = nnx.Linear(4, 2, rngs=rngs) if second else None

    def __call__(self, x):
        x = jnp.tanh(self.fc1(x))
        return self.fc2(x) if self.fc2 is not None else x[:, :2]


class Empty(nnx.Module):
    def __call__(self, x):
        return x[:, :2]


def _loss_torch(model, x):
    return model(x).sum()


def _loss_jax(model, x):
    return model(x).sum()


def _adam(params):
    return torch.optim.Adam(params, lr=1e-3)


@pytest.mark.parametrize("port", [Empty, lambda: Port(second=False)], ids=["nothing mapped", "unmapped tensors"])
def test_every_comparison_refuses_a_pair_whose_weights_do_not_correspond(port):
    model = Net()
    calls = {
        "forward": lambda: compare_forward(model, port(), X),
        "gradients": lambda: compare_gradients(model, port(), X, _loss_torch, _loss_jax),
        "training": lambda: compare_training(model, port(), _adam, optax.adam(1e-3), [X], _loss_torch, _loss_jax),
        "training without transfer": lambda: compare_training(
            model, port(), _adam, optax.adam(1e-3), [X], _loss_torch, _loss_jax, transfer=False
        ),
    }
    for name, call in calls.items():
        with pytest.raises(PortingError, match=r"torch fc2\.weight \[2, 4\]: no counterpart") as error:
            call()
        assert "<root>: 2 Linear in torch" in str(error.value), name


def test_parameters_without_a_compared_gradient_fail_the_report():
    class Extra(Port):
        def __init__(self):
            super().__init__()
            self.gain = nnx.Param(jnp.ones(2))

        def __call__(self, x):
            return super().__call__(x) * self.gain[...]

    model, port = Net(), Extra()
    transfer_weights(model, port, ignore=["gain"])
    report = compare_gradients(model, port, X, _loss_torch, _loss_jax, ignore=["gain"])
    assert report.passed, report.format_table()  # ignored on purpose: said, not failed
    assert "compared the loss and 4 of 5 NNX parameter gradient(s)" in report.scope
    assert "ignored: gain" in report.scope


def test_a_forward_that_compares_nothing_fails():
    class Idle(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):  # never calls its layer; the port neither
            return x

    class IdlePort(nnx.Module):
        def __init__(self):
            self.fc = nnx.Linear(4, 4, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return x

    model, port = Idle(), IdlePort()
    transfer_weights(model, port)
    report = compare_forward(model, port, X)
    assert report.passed  # the root is compared (2 rows): evidence, if thin
    assert "0 of 1 paired layer(s)" in report.scope and "paired layers not called: fc -> fc" in report.scope

    class Same(nnx.Module):
        def __call__(self, x):
            return x

    nothing = compare_forward(nn.Identity(), Same(), X)  # equal outputs, but no weights behind them
    assert all(row.passed for row in nothing.rows) and not nothing.passed
    assert "FAIL: no layer or parameter is paired" in str(nothing)


def test_reports_say_how_much_they_compared():
    model, port = Net(), Port()
    transfer_weights(model, port)
    forward = compare_forward(model, port, X)
    assert forward.passed
    assert "2 of 2 paired layer(s) and 1 container(s)" in str(forward)
    assert "2 layer(s) and 0 loose parameter(s) paired, 4 NNX tensor(s) mapped" in str(forward)
    gradients = compare_gradients(model, port, X, _loss_torch, _loss_jax)
    assert gradients.passed and "compared the loss and 4 of 4 NNX parameter gradient(s)" in str(gradients)


def test_compare_optimizers_needs_something_to_compare():
    with pytest.raises(ValueError, match="needs parameters and steps"):
        compare_optimizers(_adam, optax.adam(1e-3), shapes=())
    with pytest.raises(ValueError, match="needs parameters and steps"):
        compare_optimizers(_adam, optax.adam(1e-3), steps=0)


class Dense(linen.Module):
    @linen.compact
    def __call__(self, x):
        return linen.Dense(2)(x)


class HoldsLinen:  # what a Hugging Face Flax model object looks like to the toolkit
    module = Dense()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (Dense, r"is a Dense, not a flax.nnx.Module: wrap it: nnx.bridge.ToNNX\(Dense\(...\)"),
        (HoldsLinen, r"wrap the linen module it holds: nnx.bridge.ToNNX\(model.module"),
        (lambda: nnx.bridge.ToNNX(Dense(), rngs=nnx.Rngs(0)), r"holds no parameters yet: .*\.lazy_init\(\*inputs\)"),
        (Net, "the torch model goes first"),
        (lambda: {"fc": 1}, "port it to flax.nnx"),
    ],
)
def test_what_is_not_an_nnx_module_is_refused_with_the_fix(make, message):
    with pytest.raises(PortingError, match=message):
        transfer_weights(Net(), make())
    with pytest.raises(PortingError, match=message):
        compare_forward(Net(), make(), X)


def test_the_torch_side_must_be_a_torch_module():
    with pytest.raises(
        PortingError, match=r"the first model is a Port, not a torch.nn.Module \(the NNX model goes second\)"
    ):
        transfer_weights(Port(), Port())
