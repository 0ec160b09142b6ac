"""Forward + backward of the molecule models: torch eager, ``torch.compile`` and ``jax.jit``.

One call is the loss and the gradient of every parameter (``compute_loss`` + ``backward`` on
torch, ``jax.value_and_grad`` of the functional ``loss`` on JAX) on one fixed prepared batch of the
dataset: what a model costs, without the optimizer (``ml_patterns_bench.training`` times the whole train step).
Both architectures (the multi-task model, the autoencoder) at two sizes. Every contender starts
from the same canonical weights and batch; the losses of its warm-up calls are kept as the proof
that the contenders did the same arithmetic. Timing and compile time: ``ml_patterns_bench.harness``.

Dropout is 0, so both backends do the same work (their dropout masks could not match anyway).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import numpy as np
import torch

import jax_impl.models
import jax_impl.molecules.models
import jax_impl.precision
import jax_impl.training
import torch_impl.molecules.models
import torch_impl.precision
import torch_impl.runtime
import torch_impl.state
from jax_impl.collate import collate_molecules
from ml_patterns.data import LazyDataset
from ml_patterns.errors import UsageError
from ml_patterns.loader import batch_rng
from ml_patterns.molecules.batches import prepare_batch
from ml_patterns.molecules.config import ARCHITECTURES, ModelConfig
from ml_patterns.molecules.prepare import read_manifest

from . import flops
from .common import BenchContext
from .harness import Step, contender_rows

BENCHMARK = "model_forward_backward"


@dataclasses.dataclass(frozen=True)
class ModelSize:
    name: str
    d_model: int
    n_layers: int  # encoder layers, and the autoencoder's decoder layers
    n_heads: int
    batch: int
    length: int  # every sequence padded (or cut) to this many tokens

    def config(self, manifest: dict, architecture: str) -> ModelConfig:
        return ModelConfig.from_manifest(
            manifest,
            architecture=architecture,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_layers=self.n_layers,
            n_decoder_layers=self.n_layers,
            d_ff=4 * self.d_model,
            max_len=self.length,
            dropout=0.0,
            attention_dropout=0.0,
            seed=0,
        )

    def describe(self, architecture: str) -> str:
        return (
            f"{architecture} {self.name}: d_model {self.d_model} x {self.n_layers} layers, "
            f"batch {self.batch} x length {self.length}"
        )


# CPU (one core): ~0.1 s and ~1 s per call (3 and 20 GFLOP). GPU: launch-bound
# and matmul-bound on an H100 in full float32.
SIZES = {
    "cpu": (ModelSize("small", 64, 2, 4, 32, 64), ModelSize("medium", 128, 4, 4, 32, 64)),
    "gpu": (ModelSize("small", 256, 4, 4, 64, 128), ModelSize("medium", 512, 8, 8, 128, 256)),
}


@dataclasses.dataclass(frozen=True)
class Problem:
    architecture: str
    size: ModelSize
    config: ModelConfig
    weights: dict[str, np.ndarray]  # canonical initial weights, the same for every contender
    batch: dict  # one prepared numpy batch (ml_patterns.molecules.batches), [size.batch, size.length]

    def describe(self) -> str:
        return self.size.describe(self.architecture)


def first_batch(data_dir: Path, config: ModelConfig, batch: int, length: int) -> dict:
    """The first ``batch`` training molecules, padded (or cut) to ``length`` and prepared as batch 0
    of epoch 0 (token masks from ``batch_rng(seed, 0, 0)``, as the Trainer draws them)."""
    dataset = LazyDataset(data_dir, split="train")
    if len(dataset) < batch:
        raise UsageError(f"{data_dir}: the train split has {len(dataset)} molecules, fewer than the batch of {batch}")
    collated = collate_molecules([dataset[i] for i in range(batch)], buckets=(length,), max_length=length)
    dataset.close()
    return prepare_batch(collated, config, batch_rng(config.seed, 0, 0))


def make_problem(data_dir: Path, manifest: dict, architecture: str, size: ModelSize) -> Problem:
    """``first_batch`` of the size; weights from torch's build_model."""
    config = size.config(manifest, architecture)
    batch = first_batch(data_dir, config, size.batch, size.length)
    weights = torch_impl.state.to_numpy(torch_impl.molecules.models.build_model(config))
    return Problem(architecture, size, config, weights, batch)


def run(ctx: BenchContext) -> list[dict]:
    manifest = read_manifest(ctx.data_dir)
    rows = []
    for device in ctx.devices:
        for size in SIZES[device][:1] if ctx.quick else SIZES[device]:
            for architecture in ARCHITECTURES:
                problem = make_problem(ctx.data_dir, manifest, architecture, size)
                config = problem.config
                heads = (
                    f"{len(config.tasks)} regression heads + masked-token head"
                    if architecture == "multitask"
                    else f"encoder + {config.n_decoder_layers}-layer causal decoder"
                )
                detail = f"loss and every parameter's gradient, no optimizer; {heads}, d_ff {config.d_ff}, float32"
                rows += problem_rows(BENCHMARK, problem, step(problem), ctx, device, detail + ", dropout 0")
    return rows


def problem_rows(benchmark: str, problem: Problem, step: Step, ctx: BenchContext, device: str, detail: str) -> list:
    """``step`` of ``problem`` for every contender: samples/s and the model's forward + backward FLOPs."""
    size = problem.size
    flop_count = flops.forward_backward(problem.config, size.batch, size.length)
    return contender_rows(
        benchmark,
        problem.describe(),
        step,
        ctx,
        device,
        items=size.batch,
        unit="samples/s",
        flops=flop_count,
        detail=detail,
    )


def step(problem: Problem) -> Step:
    return Step(
        torch=functools.partial(torch_step, problem),
        jax=lambda _device, precision="float32": jax_step(problem, precision),
    )


def torch_step(problem: Problem, device: torch.device, precision: str = "float32"):
    """``compute_loss`` + ``backward``, the gradients left in ``.grad``."""
    model = torch_impl.molecules.models.build_model(problem.config, weights=problem.weights).to(device)
    batch = torch_impl.runtime.to_device(problem.batch, device)

    def forward_backward() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        with torch_impl.precision.autocast(precision, device):
            loss = model.compute_loss(batch)
        loss.backward()
        return loss.detach()

    return forward_backward


def jax_step(problem: Problem, precision: str = "float32"):
    """``jax.value_and_grad`` of the functional ``loss``; the state is the gradients' buffer (the
    outputs must include them, or XLA would not compute them)."""
    fn, params, rest = jax_impl.models.functional(
        jax_impl.molecules.models.build_model(problem.config, weights=problem.weights),
        jax_impl.precision.compute_dtype(precision),
    )
    loss_and_grad = jax.value_and_grad(lambda p, r, b: fn.loss(p, r, b)[0])

    def forward_backward(grads, params, rest, batch):
        loss, grads = loss_and_grad(params, rest, batch)
        return grads, loss

    zeros = jax.tree.map(jax.numpy.zeros_like, params)
    return (
        jax.jit(forward_backward, donate_argnums=0),
        zeros,
        (params, rest, jax_impl.training.to_device(problem.batch)),
    )
