"""The torch worker's own part: your model as the Trainer takes it, and its global RNG between runs."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ml_patterns.checkpoint import load_checkpoint
from ml_patterns_app.compare.pair import PairSpec, check_loss
from ml_patterns_app.compare.settings import WorkerJob
from ml_patterns_app.porting.command import build_model, load_callable
from torch_impl import state


class WithLoss(torch.nn.Module):
    """``model`` with ``compute_loss(batch) = loss(model, batch)`` (``--torch-loss``)."""

    def __init__(self, model: torch.nn.Module, loss: Callable):
        super().__init__()
        self.model, self.loss = model, loss

    def compute_loss(self, batch):
        return self.loss(self.model, batch)


def user_model(spec: PairSpec, job: WorkerJob) -> torch.nn.Module:
    """``--torch``'s model with the run's initial weights (``job.weights``), its loss attached."""
    model = build_model(spec.torch, "--torch", torch.nn.Module, "a torch.nn.Module")
    state.from_numpy(model, load_checkpoint(job.weights)[0], source=job.weights)
    if spec.torch_loss is not None:
        return WithLoss(model, load_callable(spec.torch_loss, "--torch-loss"))
    check_loss(model, "--torch", spec.torch, "--torch-loss")
    return model


def rng_reseeder() -> Callable[[], None]:
    """Called as the worker starts, before anything draws from torch's global RNG: a function that
    seeds it (the CPU's and every GPU's) with the seed it started with, so that each run of a worker
    that runs several (``worker.run_jobs``) draws what it would draw in a process of its own
    (dropout, a model's own initialization before its weights are loaded)."""
    seed = torch.initial_seed()
    return lambda: torch.manual_seed(seed)
