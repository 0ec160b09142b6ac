"""A chaotic training run: ``compare_training`` reports its predictability horizon instead of a
disagreement, and a real bug injected in the same run is still reported.

The example's CNN (examples/check_your_port.py) under Adam at learning rate 10: the loss jumps
about, and torch's own reruns from weights one ulp off spread past ``CHAOS_LEVEL`` within the first
hundred steps, after which no step can be compared one to one.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import optax
import pytest
import torch
from flax import nnx

from jax_impl.optim import build_optimizer
from ml_patterns.optim import OptimizerConfig
from ml_patterns.verdict import CHAOTIC, DISAGREE
from ml_patterns_app.porting import compare_training

STEPS = 120
LEARNING_RATE = 10.0


def example():
    path = Path(__file__).resolve().parents[1] / "examples" / "check_your_port.py"
    spec = importlib.util.spec_from_file_location("check_your_port", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train(optax_optimizer):
    cnn = example()
    torch.manual_seed(0)
    torch_batches, nnx_batches = cnn.make_batches(STEPS)
    return compare_training(
        cnn.TorchNet(),
        cnn.NnxNet(nnx.Rngs(0)),
        lambda params: torch.optim.Adam(params, lr=LEARNING_RATE),
        optax_optimizer,
        torch_batches,
        cnn.loss_torch,
        cnn.loss_jax,
        nnx_batches=nnx_batches,
    )


@pytest.mark.standard_promotion("optax's Adam mixes its int32 step count with Python floats")
def test_a_chaotic_run_reports_its_horizon_and_a_bug_in_it_is_still_caught():
    correct = train(build_optimizer(OptimizerConfig("adam", learning_rate=LEARNING_RATE)))
    verdict = correct.verdict
    assert verdict.outcome == CHAOTIC and correct.passed, correct.summary()
    assert 0 < verdict.horizon < STEPS and f"chaotic from step {verdict.horizon}" in correct.summary()
    assert verdict.spread[verdict.horizon :].max() > 1e-3  # the reruns themselves came apart

    buggy = train(optax.adam(LEARNING_RATE, eps=0.0, eps_root=1e-8))  # sqrt(v + eps): the catalogue's bug
    assert buggy.verdict.outcome == DISAGREE and not buggy.passed, buggy.summary()
    assert buggy.first_bad_step is not None and buggy.first_bad_step < verdict.horizon
