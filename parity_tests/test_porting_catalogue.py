"""The catalogue of porting bugs: each is caught and localized to its layer (or to the optimizer),
while the correct port passes. The model is a small Transformer that is not ours (porting_models.py)."""

from __future__ import annotations

import optax
import pytest
import torch

from ml_patterns_app.porting import (
    PortingError,
    compare_forward,
    compare_gradients,
    compare_optimizers,
    compare_training,
    transfer_weights,
)
from parity_tests.porting_models import (
    BUGS,
    Transformer,
    TransformerPort,
    batch,
    ignored,
    loss_jax,
    loss_torch,
    port,
)

# Of compare_training: the optimizer bug (Adam's epsilon inside the square root) is outside the
# floor from step 3 on, so 10 steps catch it with room; every other bug is caught by the forward.
STEPS = 10


@pytest.fixture(scope="module")
def model():
    return Transformer()


def test_the_correct_port_agrees_layer_by_layer_and_in_gradients(model):
    correct = port(model)
    tokens, mask, labels = batch(0)
    forward = compare_forward(model, correct, (tokens, mask))
    assert forward.passed, forward.format_table()
    assert len(forward.rows) > 40  # every layer and block was watched, on both sides
    gradients = compare_gradients(model, correct, (tokens, mask, labels), loss_torch, loss_jax)
    assert gradients.passed, gradients.format_table()


@pytest.mark.parametrize("bug", BUGS)
def test_each_porting_bug_is_caught_at_its_layer(model, bug):
    where, what = BUGS[bug]
    report = compare_forward(model, port(model, {bug}), batch(0)[:2], ignore=ignored({bug}))
    assert not report.passed
    assert (report.first.torch_name, report.first.what) == (where, what), report.format_table()
    assert where in report.where
    if bug == "layernorm_eps":  # the note that explains it, under the layer
        assert "Layer note: epsilon: torch 1e-05 vs nnx 1e-06" in report.where


def test_a_dropped_bias_is_refused_by_the_transfer_by_name(model):
    with pytest.raises(PortingError, match=r"blocks\.0\.mlp\.fc2\.bias \[8\]: no counterpart") as error:
        transfer_weights(model, TransformerPort({"dropped_bias"}))
    assert "blocks.1.mlp.fc2.bias" in str(error.value)


def _adam_torch(params):
    return torch.optim.Adam(params, lr=1e-3)


ADAM = optax.adam(1e-3)
ADAM_EPS_INSIDE = optax.adam(1e-3, eps=0.0, eps_root=1e-8)  # sqrt(v + eps) where torch has sqrt(v) + eps


@pytest.mark.standard_promotion("optax's Adam mixes its int32 step count with Python floats")
def test_the_correct_port_trains_within_the_noise_floor(model, tmp_path):
    batches = [batch(seed) for seed in range(STEPS)]
    report = compare_training(model, TransformerPort(), _adam_torch, ADAM, batches, loss_torch, loss_jax)
    assert report.passed, report.summary()
    assert report.plot(tmp_path / "drift.png").stat().st_size > 0
    assert compare_optimizers(_adam_torch, ADAM).passed


@pytest.mark.standard_promotion("optax's Adam mixes its int32 step count with Python floats")
def test_adam_epsilon_inside_the_square_root_is_caught_and_blamed_on_the_optimizer(model):
    batches = [batch(seed) for seed in range(STEPS)]
    report = compare_training(model, TransformerPort(), _adam_torch, ADAM_EPS_INSIDE, batches, loss_torch, loss_jax)
    assert not report.passed
    assert report.gradients.passed and report.first_bad_step > 0  # same start, apart after updates
    assert "the optimizer" in report.where
    optimizer = compare_optimizers(_adam_torch, ADAM_EPS_INSIDE)
    assert not optimizer.passed and optimizer.first.label.startswith("step 1")
