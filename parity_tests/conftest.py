"""Strict numerics for the parity suite (Equinox's habit) and full float32 on both sides.

- JAX: strict dtype promotion and rank promotion raise, so a silent up-cast or broadcast fails loudly;
  matmuls at "highest" precision (TF32 would otherwise be on for float32 on A100/H100).
- torch: TF32 off for matmul and cuDNN, for the same reason.

A test that needs JAX's standard promotion says why with
``@pytest.mark.standard_promotion("reason")`` (optax's Adam, for one, mixes its int32 step count with
Python floats in the bias correction).
"""

from __future__ import annotations

import jax
import pytest

import jax_impl.runtime
import torch_impl.runtime

for runtime in (torch_impl.runtime, jax_impl.runtime):
    runtime.set_precision("float32")


def pytest_configure(config):
    config.addinivalue_line("markers", "standard_promotion(reason): run with JAX's standard dtype promotion")


@pytest.fixture(autouse=True)
def strict_jax_numerics(request):
    marker = request.node.get_closest_marker("standard_promotion")
    if marker is not None and not marker.args:
        raise pytest.UsageError(f"{request.node.nodeid}: standard_promotion needs a reason")
    promotion = "standard" if marker is not None else "strict"
    with jax.numpy_dtype_promotion(promotion), jax.numpy_rank_promotion("raise"):
        yield
