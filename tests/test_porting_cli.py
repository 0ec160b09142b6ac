"""``ml-patterns parity --torch MODULE:FACTORY --jax MODULE:FACTORY --inputs FILE`` on a user's model."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ml_patterns_app.cli import main

USER_MODULE = """
import jax
import torch
from flax import nnx


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


class Port(nnx.Module):
    def __init__(self, approximate):
        rngs = nnx.Rngs(0)
        self.dense1, self.dense2 = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 2, rngs=rngs)
        self.approximate = approximate

    def __call__(self, x):
        return self.dense2(jax.nn.gelu(self.dense1(x), approximate=self.approximate))


def build_torch():
    return Net()


def build_port():
    return Port(approximate=False)


def build_port_with_tanh_gelu():
    return Port(approximate=True)


def build_nothing():
    return 3
"""


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32))
    yield inputs
    sys.modules.pop("user_models", None)  # its file goes with tmp_path: no later test may find it imported


def _parity(*args):
    return main(["parity", "--torch", "user_models:build_torch", *args])


def test_a_correct_port_agrees(user_models, capsys):
    assert _parity("--jax", "user_models:build_port", "--inputs", str(user_models)) == 0
    out = capsys.readouterr().out
    assert "fc1.weight" in out and "dense1.kernel" in out and "forward: agree" in out


def test_a_wrong_activation_is_found_between_the_layers(user_models, capsys):
    assert _parity("--jax", "user_models:build_port_with_tanh_gelu", "--inputs", str(user_models)) == 1
    assert "First divergence: the input of fc2 -> dense2" in capsys.readouterr().out


def test_without_inputs_only_the_mapping(user_models, capsys):
    assert _parity("--jax", "user_models:build_port") == 0
    assert "Pass --inputs FILE" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("jax_spec", "inputs", "message"),
    [
        ("user_models", None, "expected MODULE:FACTORY"),
        ("no_such_module:build", None, "cannot import 'no_such_module'"),
        ("user_models:missing", None, "user_models has no function 'missing'"),
        ("user_models:build_nothing", None, "returned a int, not a flax.nnx.Module"),
        ("user_models:build_port", "inputs.txt", "expected a .npz"),
    ],
)
def test_user_errors_are_one_line(user_models, capsys, jax_spec, inputs, message):
    extra = ["--inputs", str(user_models.with_name(inputs))] if inputs else []
    assert _parity("--jax", jax_spec, *extra) == 2
    assert message in capsys.readouterr().err


def test_both_factories_are_needed(user_models, capsys):
    assert _parity() == 2
    assert "--torch and --jax go together" in capsys.readouterr().err
