"""The runs ``calibrate_verdict`` judges, trained as compare's workers train them: the reference
(torch: fused AdamW, SDPA attention, one thread), its ensemble, its float64 anchor, the correct
variants and the JAX runs with a bug injected. Each returns ``(losses [T], weight norms [E])``.

Every run trains in the family's precision (``CompareSettings.precision``: float32 or bf16-mixed,
``ml_patterns.precision``) except the float64 anchor, which is float64 without autocast, as
compare's is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ml_patterns import verdict
from ml_patterns.callbacks import Callback
from ml_patterns.data import LazyDataset
from ml_patterns.molecules.batches import BatchPreparer
from ml_patterns.molecules.prepare import read_manifest
from ml_patterns.samplers import LengthGroupedSampler, sequence_lengths
from ml_patterns.ulps import arrays_off
from ml_patterns_app.compare.settings import CompareSettings
from ml_patterns_app.compare.workload import first_molecules

BUGS = (
    "lr x1.5",
    "Adam epsilon inside the sqrt",
    "optax float32 bias correction",
    "weight decay +1%",
    "GELU tanh",
    "LayerNorm eps 1e-6",
)
# The mildest bugs, injected in the long runs too: a bug that builds up slowly shows in more steps.
MILD_BUGS = ("optax float32 bias correction", "weight decay +1%")
CORRECT = ("jax", "torch foreach AdamW", "torch written-out attention", "torch 2 threads")
INFORMATIONAL = ("jax, optax's one-rounding AdamW decay",)


class Record(Callback):
    """Every step's loss and each epoch's global weight norm (``verdict.global_norm``)."""

    def __init__(self):
        self.losses: list = []
        self.norms: list[float] = []

    def on_batch_end(self, batch_idx: int, trainer, loss) -> None:
        self.losses.append(loss)

    def on_epoch_end(self, epoch: int, trainer, metrics) -> None:
        self.norms.append(verdict.global_norm(trainer.snapshot_weights()))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([float(loss) for loss in self.losses]), np.array(self.norms)


class Workload:
    """One family's data, model config, initial weights and loaders, built as compare's worker builds them."""

    def __init__(self, data: Path, settings: CompareSettings):
        import torch_impl.molecules.models as torch_models
        from torch_impl import state

        self.settings = settings
        manifest = read_manifest(data)
        train = first_molecules(LazyDataset(data, split="train"), settings.max_train_molecules)
        self.train = train
        sampler = settings.train_sampler(train)
        lengths = sampler.lengths if isinstance(sampler, LengthGroupedSampler) else sequence_lengths(train)
        self.buckets = settings.buckets(manifest, sampler, lengths)
        self.config = settings.model_config(manifest, max_len=self.buckets[-1])
        self.steps = -(-len(train) // settings.batch_size)
        self.optimizer = settings.optimizer(self.steps * settings.epochs)
        self.weights = state.to_numpy(torch_models.build_model(self.config))

    def loader(self, impl):
        collate = {"buckets": self.buckets, "max_length": self.buckets[-1], "group_by_length": True}
        return impl.data.make_loader(self.train, self.settings.batch_size, seed=self.settings.seed, **collate)

    def moved_weights(self, seed: int, ulps: int) -> dict:
        """The initial weights, every floating-point entry ``ulps`` ulps off (signs from ``seed``), as
        compare's runner moves an ensemble rerun's (``ml_patterns.ulps.arrays_off``)."""
        return arrays_off(self.weights, seed, ulps)


def torch_losses(work: Workload, weights: dict, variant: str = "", rounding_seed: int | None = None) -> tuple:
    """(losses, norms) of the reference (``variant`` ""), or one of: "float64", "foreach", "written-out", "2 threads";
    with ``rounding_seed``, a run of the ensemble (one float32 ulp of noise a step, as compare's)."""
    import torch

    import torch_impl.data  # noqa: F401
    import torch_impl.molecules.models as models
    from torch_impl import runtime, training

    torch.set_num_threads(2 if variant == "2 threads" else 1)
    model = models.build_model(work.config, weights=weights)
    prepare = BatchPreparer(work.config)
    transform = prepare
    precision = work.settings.precision
    if variant == "float64":  # as compare's anchor: float64, never under autocast
        model, transform = runtime.float64_reference(model, prepare)
        precision = "float32"
    if variant == "written-out":
        for module in model.modules():
            if isinstance(module, models.Attention):
                module.fused = False
    record = Record()
    callbacks = [record] if rounding_seed is None else [record, runtime.rounding_noise(rounding_seed)]
    device = runtime.select_device("cpu")
    trainer = training.Trainer(
        model, work.optimizer, callbacks, device=device, batch_transform=transform, precision=precision
    )
    if variant == "foreach":
        for group in trainer.optimizer.optimizer.param_groups:
            group.update(fused=False, foreach=True)
    trainer.fit(work.loader(torch_impl), None, work.settings.epochs)
    torch.set_num_threads(1)
    return record.result()


def jax_optimizer(work: Workload, bug: str):
    """The optimizer of the JAX run ``bug`` (a config, or an optax chain where the bug is in it)."""
    import optax

    from jax_impl import optim

    config = work.optimizer
    if bug == "lr x1.5":
        return dataclasses.replace(config, learning_rate=1.5 * config.learning_rate)
    if bug == "weight decay +1%":
        return dataclasses.replace(config, weight_decay=1.01 * config.weight_decay)
    b1, b2 = config.betas
    schedule = optim.learning_rate_schedule(config)
    adam = {
        "Adam epsilon inside the sqrt": optax.scale_by_adam(b1, b2, eps=0.0, eps_root=config.eps),
        "optax float32 bias correction": optax.scale_by_adam(b1, b2, eps=config.eps),
    }.get(bug, optim.scale_by_adam(b1, b2, config.eps))
    if bug == INFORMATIONAL[0]:
        last = [optax.add_decayed_weights(config.decay), optax.scale_by_learning_rate(schedule)]
    elif bug in ("Adam epsilon inside the sqrt", "optax float32 bias correction"):
        last = [optim.decay_then_step(schedule, config.decay)]
    else:
        return config
    return optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), adam, *last)


def jax_losses(work: Workload, bug: str = "") -> tuple:
    """(losses, norms) of the JAX run, with ``bug`` injected (a name from ``BUGS``, or "")."""
    import jax_impl.data  # noqa: F401
    import jax_impl.molecules.models as models
    from jax_impl import runtime, training

    config = work.config
    if bug == "GELU tanh":
        config = dataclasses.replace(config, gelu_approximate=True)
    if bug == "LayerNorm eps 1e-6":
        config = dataclasses.replace(config, layer_norm_eps=1e-6)
    model = models.build_model(config, weights=work.weights)
    record = Record()
    trainer = training.Trainer(
        model,
        jax_optimizer(work, bug),
        [record],
        device=runtime.select_device("cpu"),
        batch_transform=BatchPreparer(work.config),
        pad_batches_to=work.settings.batch_size,
        precision=work.settings.precision,
    )
    trainer.fit(work.loader(jax_impl), None, work.settings.epochs)
    return record.result()
