"""The torch worker's own parts: your model as the Trainer takes it, torch.compile, the FLOP count."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from ml_patterns.checkpoint import load_checkpoint
from ml_patterns_app.compare.pair import PairSpec, check_loss
from ml_patterns_app.compare.settings import WorkerJob
from ml_patterns_app.porting.command import build_model, load_callable
from torch_impl import state
from torch_impl.training import to_device


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


def compile_loss(model: torch.nn.Module) -> None:
    """The torch.compile contender: ``model.compute_loss`` compiled, the Trainer left as it is (it
    calls ``compute_loss``; the backward pass is compiled with it, by AOTAutograd)."""
    model.compute_loss = torch.compile(model.compute_loss)


def count_step_flops(model: torch.nn.Module, batch, device: torch.device) -> float:
    """The FLOPs of one training step's forward and backward pass on ``batch`` (numpy), counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions: what dominates) on a
    copy of ``model``, so that the run's model (its BatchNorm statistics, its gradients) is not
    touched. The optimizer's update is not counted (a few FLOPs per parameter)."""
    twin = copy.deepcopy(model).train()
    counter = FlopCounterMode(display=False)
    with counter:
        twin.compute_loss(to_device(batch, device)).backward()
    return float(counter.get_total_flops())
