"""A ``WeightMismatchError`` between differently structured models points to the porting toolkit."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

import jax_impl.state
import torch_impl.state
from ml_patterns.checkpoint import WeightMismatchError
from tests.test_training import TorchRegressor, regressor


class OtherStructure(nnx.Module):
    """The regressor's layers under other names: what a hand port often looks like."""

    def __init__(self):
        rngs = nnx.Rngs(0)
        self.encoder, self.head = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 1, rngs=rngs)


def test_torch_weights_into_an_nnx_model_of_another_structure_name_transfer_weights():
    arrays = torch_impl.state.to_numpy(regressor("torch"))
    model = OtherStructure()
    before = jax_impl.state.to_numpy(model)
    with pytest.raises(WeightMismatchError) as caught:
        jax_impl.state.from_numpy(model, arrays, source="torch_regressor.safetensors")
    message = str(caught.value)
    assert message.startswith("torch_regressor.safetensors do not fit the model; missing 4: encoder.bias")
    assert "unexpected 4: hidden.bias" in message
    assert "ml_patterns_app.porting.transfer_weights" in message
    after = jax_impl.state.to_numpy(model)
    assert all(np.array_equal(before[name], after[name]) for name in before)  # nothing was copied


def test_nnx_weights_into_a_torch_model_of_another_structure_name_transfer_weights():
    arrays = jax_impl.state.to_numpy(OtherStructure())
    with pytest.raises(WeightMismatchError, match=r"unexpected 4: encoder\.bias.*porting\.transfer_weights"):
        torch_impl.state.from_numpy(TorchRegressor(), arrays, source="nnx.safetensors")


def test_a_shape_mismatch_alone_does_not_suggest_transfer_weights():
    arrays = torch_impl.state.to_numpy(regressor("torch"))
    arrays["out.weight"] = np.zeros((1, 9), np.float32)
    with pytest.raises(WeightMismatchError) as caught:
        torch_impl.state.from_numpy(TorchRegressor(), arrays, source="ckpt")
    assert "out.weight (shape [1, 9], expected [1, 8])" in str(caught.value)
    assert "transfer_weights" not in str(caught.value)
