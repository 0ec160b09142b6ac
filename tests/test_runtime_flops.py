"""``runtime.count_step_flops`` and ``runtime.compile_loss``, the seam compare's worker counts FLOPs and
compiles through, on both backends: the same tiny MLP [16, 4] -> [16], its loss the mean squared error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl.runtime
import torch_impl.runtime

BATCH = {"x": np.linspace(-1, 1, 64, dtype=np.float32).reshape(16, 4), "y": np.ones(16, np.float32)}
# Forward and backward, 2 FLOPs per multiply-add: the two layers' matmuls forward, the gradients of
# both weights, and of the hidden activations (not of the inputs).
MATMUL_FLOPS = 2 * 16 * (4 * 16 + 16 * 1) + 2 * 16 * (4 * 16 + 16 * 1) + 2 * 16 * 16 * 1


class TorchMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden, self.out = torch.nn.Linear(4, 16), torch.nn.Linear(16, 1)

    def compute_loss(self, batch):
        return ((self.out(torch.tanh(self.hidden(batch["x"])))[:, 0] - batch["y"]) ** 2).mean()


class NnxMLP(nnx.Module):
    def __init__(self):
        self.hidden, self.out = nnx.Linear(4, 16, rngs=nnx.Rngs(0)), nnx.Linear(16, 1, rngs=nnx.Rngs(1))

    def compute_loss(self, batch):
        return ((self.out(nnx.tanh(self.hidden(batch["x"])))[:, 0] - batch["y"]) ** 2).mean()


def test_torch_counts_the_matmuls_of_forward_and_backward_and_leaves_the_model_alone():
    model = TorchMLP()
    counted = torch_impl.runtime.count_step_flops(model, BATCH, torch.device("cpu"))
    assert counted["flops"] == MATMUL_FLOPS and "FlopCounterMode" in counted["counter"]
    assert all(p.grad is None for p in model.parameters())


def test_jax_counts_every_operation_of_the_compiled_step_and_leaves_the_model_alone():
    model = NnxMLP()
    kernel = np.asarray(model.hidden.kernel[...]).copy()
    counted = jax_impl.runtime.count_step_flops(model, BATCH, jax_impl.runtime.device("cpu"))
    # XLA counts the elementwise work (tanh, the squared error, the bias gradients) beside the
    # matmuls: more than torch's count of the same step, and named as a different counter.
    assert counted["flops"] > MATMUL_FLOPS and "XLA" in counted["counter"]
    np.testing.assert_array_equal(np.asarray(model.hidden.kernel[...]), kernel)


# Importing dynamo imports torch.utils.mkldnn, which applies torch's own deprecated
# @torch.jit.script_method at import time (torch 2.13), not our code.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_only_torch_has_a_compiler_to_add():
    model = TorchMLP()
    torch_impl.runtime.compile_loss(model)
    assert "compute_loss" in vars(model)  # the instance's loss is now the compiled one, the class's untouched
    with pytest.raises(ValueError, match="always compiled"):
        jax_impl.runtime.compile_loss(NnxMLP())
