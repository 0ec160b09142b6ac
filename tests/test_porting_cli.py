"""``ml-patterns parity --torch MODULE:FACTORY --jax MODULE:FACTORY --inputs FILE`` on a user's model."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ml_patterns_app.cli import main

USER_MODULE = """
import jax
import jax.numpy as jnp
import torch
from flax import nnx

from ml_patterns_app.porting import Rule, TensorMap


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


class Gain(torch.nn.Module):  # a custom layer: its port needs a rule
    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.linspace(0.5, 2.0, 8))

    def forward(self, x):
        return x * self.gain


class GainPort(nnx.Module):
    def __init__(self):
        self.scale = nnx.Param(jnp.ones((1, 8)))

    def __call__(self, x):
        return x * self.scale[...]


GAIN = TensorMap(("gain",), ("scale",), lambda g: (g[None],), lambda s: (s[0],), "[8]->[1,8]")
RULES = [Rule("Gain", Gain, GainPort, lambda t, n: [GAIN])]


class Shifted(torch.nn.Module):  # a keyword argument, and a custom layer
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.gain, self.fc2 = torch.nn.Linear(4, 8), Gain(), torch.nn.Linear(8, 2)

    def forward(self, x, *, offset):
        return self.fc2(self.gain(torch.tanh(self.fc1(x + offset))))


class ShiftedPort(nnx.Module):
    def __init__(self, bias=True):
        rngs = nnx.Rngs(0)
        self.fc1, self.gain = nnx.Linear(4, 8, rngs=rngs), GainPort()
        self.fc2 = nnx.Linear(8, 2, use_bias=bias, rngs=rngs)

    def __call__(self, x, *, offset):
        return self.fc2(self.gain(jnp.tanh(self.fc1(x + offset))))


def build_shifted():
    return Shifted()


def build_shifted_port():
    return ShiftedPort()


def build_shifted_port_without_bias():
    return ShiftedPort(bias=False)


class Square(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class SquarePort(nnx.Module):  # defined in the other order, under other names
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.b, self.a = nnx.Linear(4, 4, rngs=rngs), nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x):
        return self.b(jnp.tanh(self.a(x)))


def build_square():
    return Square()


def build_square_port():
    return SquarePort()
"""


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    inputs = tmp_path / "inputs.npz"
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    np.savez(inputs, x)
    np.savez(tmp_path / "keywords.npz", x, offset=np.float32(0.25) * np.ones((1, 4), np.float32))
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


def _port(torch_factory, jax_factory, *args):
    return main(["parity", "--torch", f"user_models:{torch_factory}", "--jax", f"user_models:{jax_factory}", *args])


def test_rules_and_keyword_inputs(user_models, capsys):
    keywords = str(user_models.with_name("keywords.npz"))
    assert _port("build_shifted", "build_shifted_port", "--inputs", keywords) == 1  # the custom layer, unmapped
    assert "gain -> gain.scale: shape mismatch" in capsys.readouterr().out
    assert _port("build_shifted", "build_shifted_port", "--rules", "user_models:RULES", "--inputs", keywords) == 0
    out = capsys.readouterr().out
    assert "[8]->[1,8]" in out and "forward: agree" in out and "3 of 3 paired layer(s)" in out


def test_pairs_override_the_order(user_models, capsys):
    assert _port("build_square", "build_square_port", "--inputs", str(user_models)) == 1  # fc1 with b: wrong
    assert (
        _port("build_square", "build_square_port", "--pairs", "fc1=a", "--pairs", "fc2=b", "--inputs", str(user_models))
        == 0
    )
    assert "forward: agree" in capsys.readouterr().out


def test_ignore_leaves_a_tensor_out(user_models, capsys):
    spec = ("build_shifted", "build_shifted_port_without_bias", "--rules", "user_models:RULES")
    assert _port(*spec) == 1
    assert "torch fc2.bias [2]: no counterpart" in capsys.readouterr().out
    assert _port(*spec, "--ignore", "fc2.bias") == 0
    assert "ignored: fc2.bias" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pairs", "fc1"], "expected TORCH_PATH=NNX_PATH"),
        (["--rules", "user_models:build_nothing"], "expected a porting Rule or a list of them, got function"),
        (["--rules", "user_models:NO_RULES"], "user_models has no rule 'NO_RULES'"),
    ],
)
def test_mapping_options_are_checked(user_models, capsys, args, message):
    assert _port("build_square", "build_square_port", *args) == 2
    assert message in capsys.readouterr().err


def test_mapping_options_need_the_models(capsys):
    assert main(["parity", "--ignore", "fc2.bias"]) == 2
    assert "--ignore go(es) with --torch and --jax" in capsys.readouterr().err
