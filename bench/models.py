"""Forward + backward of the molecule models: torch eager, ``torch.compile`` and ``jax.jit``.

One call is the loss and the gradient of every parameter (``compute_loss`` + ``backward`` on
torch, ``jax.value_and_grad`` of the functional ``loss`` on JAX) on one fixed prepared batch of the
dataset: what a model costs, without the optimizer (``bench.training`` times the whole train step).
Both architectures (the multi-task model, the autoencoder) at two sizes. Every contender starts
from the same canonical weights and batch; the losses of its warm-up calls are kept as the proof
that the contenders did the same arithmetic. Compile time is timed apart: ``lower().compile()`` for
JAX, the warm-up calls' excess over as many timed calls for ``torch.compile`` (compiled cold).

Dropout is 0, so both backends do the same work (their dropout masks could not match anyway).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import torch

import jax_impl.models
import jax_impl.molecules.models
import torch_impl.models
import torch_impl.molecules.models
import torch_impl.state
from bench import frameworks
from bench.common import BenchContext, Timing, failure_reason, measure_steps, result_row, skipped_row
from jax_impl.collate import collate_molecules
from ml_patterns.molecules.batches import prepare_batch
from ml_patterns.molecules.config import ARCHITECTURES, ModelConfig
from ml_patterns.data import LazyDataset
from ml_patterns.loader import batch_rng
from ml_patterns.molecules.prepare import read_manifest

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
            manifest, architecture=architecture, d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers,
            n_decoder_layers=self.n_layers, d_ff=4 * self.d_model, max_len=self.length, dropout=0.0,
            attention_dropout=0.0, seed=0,
        )

    def describe(self, architecture: str) -> str:
        return f"{architecture} {self.name}: d_model {self.d_model} x {self.n_layers} layers, batch {self.batch} x length {self.length}"


# CPU (one core): ~0.1 s and ~1 s per call (3 and 20 GFLOP). GPU: launch-bound
# and matmul-bound on an H100 in full float32.
SIZES = {
    "cpu": (ModelSize("small", 64, 2, 4, 32, 64), ModelSize("medium", 128, 4, 4, 32, 64)),
    "gpu": (ModelSize("small", 256, 4, 4, 64, 128), ModelSize("medium", 512, 8, 8, 128, 256)),
}


def forward_backward_flops(config: ModelConfig, batch: int, length: int) -> int:
    """Matmul FLOPs of one forward + backward: 3 x the forward's (each matmul's backward is two
    matmuls of its size, for the input and the weight gradient). Embeddings, LayerNorm, softmax,
    GELU and the losses are not counted.

    The multi-task encoder runs once per distinct head input (clean tokens for the regression
    heads, masked ones for the masked-token head); the autoencoder's decoder sees ``length - 1``
    tokens.
    """
    d, vocab = config.d_model, config.vocab_size

    def layers(n: int, tokens_per_row: int) -> int:
        # q, k, v and output projections, the feed-forward pair; attention scores and the weighted
        # sum of the values, [tokens x tokens] per head over head_dim (all heads: d).
        tokens = batch * tokens_per_row
        per_layer = 2 * tokens * (4 * d * d + 2 * d * config.d_ff) + 2 * 2 * batch * tokens_per_row**2 * d
        return n * per_layer

    if config.architecture == "autoencoder":
        decoded = batch * (length - 1)
        forward = layers(config.n_layers, length) + layers(config.n_decoder_layers, length - 1)
        forward += 2 * batch * d * d + 2 * decoded * d * vocab  # latent projection, lm_head
    else:
        passes = bool(config.tasks) + config.has_mlm_head
        forward = passes * layers(config.n_layers, length)
        forward += len(config.tasks) * 2 * batch * (d * d + d)  # regression heads on the pooled vector
        if config.has_mlm_head:
            forward += 2 * batch * length * (d * d + d * vocab)  # dense, decoder to the vocabulary
    return 3 * forward


@dataclasses.dataclass(frozen=True)
class Problem:
    architecture: str
    size: ModelSize
    config: ModelConfig
    weights: dict[str, np.ndarray]  # canonical initial weights, the same for every contender
    batch: dict  # one prepared numpy batch (ml_patterns.molecules.batches), [size.batch, size.length]

    def describe(self) -> str:
        return self.size.describe(self.architecture)


def make_problem(data_dir: Path, manifest: dict, architecture: str, size: ModelSize) -> Problem:
    """The first ``size.batch`` training molecules, padded (or cut) to ``size.length``, prepared as
    batch 0 of epoch 0 (token masks from ``batch_rng(0, 0, 0)``); weights from torch's build_model."""
    config = size.config(manifest, architecture)
    dataset = LazyDataset(data_dir, split="train")
    if len(dataset) < size.batch:
        raise ValueError(f"{data_dir}: the train split has {len(dataset)} molecules, fewer than the batch of {size.batch}")
    collated = collate_molecules([dataset[i] for i in range(size.batch)], buckets=(size.length,), max_length=size.length)
    dataset.close()
    batch = prepare_batch(collated, config, batch_rng(0, 0, 0))
    weights = torch_impl.state.to_numpy(torch_impl.molecules.models.build_model(config))
    return Problem(architecture, size, config, weights, batch)


def run(ctx: BenchContext) -> list[dict]:
    manifest = read_manifest(ctx.data_dir)
    rows = []
    for device in ctx.devices:
        for size in SIZES[device][:1] if ctx.quick else SIZES[device]:
            for architecture in ARCHITECTURES:
                problem = make_problem(ctx.data_dir, manifest, architecture, size)
                for contender in ctx.contenders:
                    rows.append(CONTENDERS[contender](problem, device, ctx.quick))
                    frameworks.release_memory()
    return rows


def torch_eager(problem: Problem, device: str, quick: bool) -> dict:
    return _torch(problem, device, quick, compile_backend=None)


def torch_compiled(problem: Problem, device: str, quick: bool, backend: str = "inductor") -> dict:
    """``torch.compile`` of the whole call (forward, loss, backward); a failure to compile skips
    this contender with the reason."""
    try:
        return _torch(problem, device, quick, compile_backend=backend)
    except Exception as error:  # reported as the skip reason, not swallowed
        return skipped_row(BENCHMARK, problem.describe(), "torch.compile", device, failure_reason("torch.compile", error))


def _torch(problem: Problem, device: str, quick: bool, compile_backend: str | None) -> dict:
    contender = "torch eager" if compile_backend is None else "torch.compile"
    dev = frameworks.torch_device(device)
    if dev is None:
        return skipped_row(BENCHMARK, problem.describe(), contender, device, f"torch has no {device} device here")
    frameworks.reset_peak_memory(dev)
    model = torch_impl.molecules.models.build_model(problem.config, weights=problem.weights).to(dev)
    batch = torch_impl.models.as_batch(problem.batch, dev)

    def forward_backward() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss = model.compute_loss(batch)
        loss.backward()
        return loss.detach()

    losses, timing, compile_s = frameworks.measure_torch_step(forward_backward, dev, quick, compile_backend)
    return _row(problem, contender, device, timing, compile_s, frameworks.torch_peak_memory(dev), losses)


def jax_jit(problem: Problem, device: str, quick: bool) -> dict:
    """``jax.jit(jax.value_and_grad(fn.loss))`` of the functional form, compiled by
    ``lower(...).compile()``, timed apart."""
    dev = frameworks.jax_device(device)
    if dev is None:
        return skipped_row(BENCHMARK, problem.describe(), "jax.jit", device, f"jax has no {device} backend here")
    jax.clear_caches()  # compile from scratch, like every other contender
    fn, params, rest = jax_impl.models.functional(jax_impl.molecules.models.build_model(problem.config, weights=problem.weights))
    params, rest, batch = jax.device_put((params, rest, jax_impl.models.as_batch(problem.batch)), dev)
    loss_and_grad = jax.jit(jax.value_and_grad(lambda p, r, b: fn.loss(p, r, b)[0]))
    start = time.perf_counter()
    compiled = loss_and_grad.lower(params, rest, batch).compile()
    compile_s = time.perf_counter() - start
    holder = [None]

    def forward_backward() -> jax.Array:
        loss, holder[0] = compiled(params, rest, batch)
        return loss

    losses, _, timing = measure_steps(forward_backward, lambda: jax.block_until_ready(holder[0]), quick)
    return _row(problem, "jax.jit", device, timing, compile_s, frameworks.jax_step_memory(compiled), losses)


CONTENDERS: dict[str, Callable[[Problem, str, bool], dict]] = {
    "torch eager": torch_eager,
    "torch.compile": torch_compiled,
    "jax.jit": jax_jit,
}


def _row(problem: Problem, contender: str, device: str, timing: Timing, compile_s, memory: dict, losses: list[float]) -> dict:
    size, config = problem.size, problem.config
    heads = (f"{len(config.tasks)} regression heads + masked-token head" if problem.architecture == "multitask"
             else f"encoder + {config.n_decoder_layers}-layer causal decoder")
    detail = f"loss and every parameter's gradient, no optimizer; {heads}, d_ff {config.d_ff}, float32, dropout 0"
    return result_row(
        BENCHMARK, problem.describe(), contender, device, timing, items=size.batch, unit="samples/s",
        flops=forward_backward_flops(config, size.batch, size.length), compile_s=compile_s, peak_memory=memory,
        detail=detail, warmup_losses=losses,
    )
