"""The per-step path makes no host sync and no implicit transfer (what would stall a GPU once per
step), proven on the CPU. That a torch epoch (the Tensor methods that read a value on the host made
to raise inside the step) and a JAX epoch (under ``jax.transfer_guard("disallow")``) pass is the GPU
check's dry run (tests/test_gpu_check.py); here, that each guard can fail, and that the molecule
models' ``compute_loss`` is one torch.compile graph."""

from __future__ import annotations

import jax
import pytest
import torch

import torch_impl.data
import torch_impl.losses
import torch_impl.molecules.models
import torch_impl.training
from ml_patterns.data import LazyDataset, Subset
from ml_patterns.molecules.batches import BatchPreparer
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.optim import OptimizerConfig
from ml_patterns_bench import gpu_probes


def config_for(manifest, architecture="multitask"):
    return ModelConfig.from_manifest(
        manifest, architecture=architecture, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=64, seed=1
    )


def torch_trainer_and_loader(default_dataset, architecture="multitask"):
    root, manifest = default_dataset
    config = config_for(manifest, architecture)
    trainer = torch_impl.training.Trainer(
        torch_impl.molecules.models.build_model(config),
        OptimizerConfig("adamw", learning_rate=1e-3, weight_decay=0.01),
        batch_transform=BatchPreparer(config),
    )
    loader = torch_impl.data.make_loader(Subset(LazyDataset(root, split="train"), range(40)), 16, buckets=(32, 64))
    return trainer, loader


def test_the_guard_catches_a_host_read_in_the_step(default_dataset, monkeypatch):
    """The torch guard is not vacuous: the loss's former host-side target check is caught."""
    root, manifest = default_dataset

    def syncing_check(targets, active, vocab):
        if bool((active & (targets >= vocab)).any()):
            raise AssertionError("unreachable: the targets are in range")

    monkeypatch.setattr(torch_impl.losses, "_check_targets", syncing_check)
    found = gpu_probes.step_syncs("torch", root, manifest, torch.device("cpu"))
    assert found is not None and "Tensor.__bool__ inside the training step" in found


def test_jax_transfer_guard_refuses_an_implicit_read():
    with jax.transfer_guard("disallow"), pytest.raises(Exception, match="[Dd]isallowed"):
        float(jax.numpy.ones(()) + 1)


# Dynamo instantiates the loss's autograd.Function while tracing it, which torch itself deprecates.
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
@pytest.mark.parametrize("architecture", ["multitask", "autoencoder"])
def test_molecule_compute_loss_is_one_graph(default_dataset, architecture):
    trainer, loader = torch_trainer_and_loader(default_dataset, architecture)
    host = trainer.batch_transform(next(iter(loader)), 0, 0, train=True)
    batch = torch_impl.training.to_device(host, "cpu")
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(trainer.model.compute_loss)(batch)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
