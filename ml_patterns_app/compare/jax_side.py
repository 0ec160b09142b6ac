"""The JAX worker's own part: your NNX model as the Trainer takes it, and its global RNG between runs."""

from __future__ import annotations

from collections.abc import Callable

from flax import nnx

from jax_impl import state
from ml_patterns.checkpoint import load_checkpoint
from ml_patterns_app.compare.pair import PairSpec, check_loss
from ml_patterns_app.compare.settings import WorkerJob
from ml_patterns_app.porting.command import build_model, load_callable


class WithLoss(nnx.Module):
    """``model`` with ``compute_loss(batch) = loss(model, batch)`` (``--jax-loss``)."""

    def __init__(self, model: nnx.Module, loss: Callable):
        self.model, self.loss = model, loss

    def compute_loss(self, batch):
        return self.loss(self.model, batch)


def user_model(spec: PairSpec, job: WorkerJob) -> nnx.Module:
    """``--jax``'s model with the initial weights transferred from torch (``job.weights``: the NNX file)."""
    model = build_model(spec.jax, "--jax", nnx.Module, "a flax.nnx.Module")
    state.from_numpy(model, load_checkpoint(job.weights)[0], source=job.weights)
    if spec.jax_loss is not None:
        return WithLoss(model, load_callable(spec.jax_loss, "--jax-loss"))
    check_loss(model, "--jax", spec.jax, "--jax-loss")
    return model


def rng_reseeder() -> Callable[[], None]:
    """As ``torch_side.rng_reseeder``: JAX has no global RNG (every draw takes its key), so nothing to do."""
    return lambda: None
