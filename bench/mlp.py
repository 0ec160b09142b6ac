"""Train step of an MLP at three sizes: torch eager, ``torch.compile`` and ``jax.jit`` (Flax NNX + optax).

One step is forward, MSE loss, backward and an Adam update on a fixed batch (data loading is
benchmarked apart). Both sides start from the same numpy weights and batch, so they do the same
arithmetic; each row keeps the losses of its warm-up steps as the proof (they agree across
contenders to float32 rounding).

The largest size is matmul-bound, so its GFLOP/s against the device's measured matmul peak
(``bench.peak``) says how much of the machine each framework's training step gets.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx
from torch import nn

from bench import frameworks
from bench.common import BenchContext, Timing, failure_reason, measure_steps, result_row, skipped_row

BENCHMARK = "mlp_train_step"
LEARNING_RATE = 1e-3


@dataclasses.dataclass(frozen=True)
class MLPSize:
    name: str
    batch: int
    width: int
    depth: int  # Linear(width, width) layers, ReLU between them

    def describe(self) -> str:
        return f"{self.name}: batch {self.batch}, {self.depth} x Linear({self.width}, {self.width}), Adam"

    def matmul_flops(self) -> int:
        """Matmul FLOPs of one train step (bias, ReLU, loss and Adam are not counted)."""
        per_matmul = 2 * self.batch * self.width * self.width
        # forward: one matmul per layer; backward: the weight gradient of every layer and the input
        # gradient of every layer but the first (the batch needs none, and neither side computes it).
        return per_matmul * (self.depth + self.depth + self.depth - 1)


# CPU: a step of ~1 ms (overhead-bound), ~15 ms and ~200 ms (matmul-bound) on two cores at ~120
# GFLOP/s. GPU: ~0.1 ms, ~2 ms and ~30 ms on an H100 in full float32.
SIZES = {
    "cpu": (MLPSize("small", 64, 256, 4), MLPSize("medium", 256, 512, 4), MLPSize("large", 1024, 1024, 4)),
    "gpu": (MLPSize("small", 256, 1024, 4), MLPSize("medium", 1024, 2048, 4), MLPSize("large", 4096, 4096, 4)),
}


@dataclasses.dataclass(frozen=True)
class Problem:
    """Initial weights and one batch, as numpy float32; kernels are ``[in, out]`` (JAX's layout)."""

    size: MLPSize
    kernels: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    x: np.ndarray  # [batch, width]
    y: np.ndarray  # [batch, width]


def make_problem(size: MLPSize, seed: int = 0) -> Problem:
    """Xavier-uniform kernels and zero biases (the scheme of ``torch_impl.init``), a N(0, 1) batch."""
    rng = np.random.default_rng(seed)
    limit = np.sqrt(6.0 / (size.width + size.width))
    kernels = tuple(rng.uniform(-limit, limit, (size.width, size.width)).astype(np.float32) for _ in range(size.depth))
    biases = tuple(np.zeros(size.width, np.float32) for _ in range(size.depth))
    x, y = (rng.standard_normal((size.batch, size.width), dtype=np.float32) for _ in range(2))
    return Problem(size, kernels, biases, x, y)


def run(ctx: BenchContext) -> list[dict]:
    rows = []
    for device in ctx.devices:
        for size in SIZES[device][:1] if ctx.quick else SIZES[device]:
            problem = make_problem(size)
            for contender in ctx.contenders:
                rows.append(CONTENDERS[contender](problem, device, ctx.quick))
                frameworks.release_memory()
    return rows


def torch_eager(problem: Problem, device: str, quick: bool) -> dict:
    return _torch(problem, device, quick, compile_backend=None)


def torch_compiled(problem: Problem, device: str, quick: bool, backend: str = "inductor") -> dict:
    """``torch.compile(step)``; compile time is the warm-up steps' time beyond as many timed steps.

    A failure to compile (no C++ compiler, a Python version dynamo does not support) skips this
    contender with the reason, rather than ending the run.
    """
    try:
        return _torch(problem, device, quick, compile_backend=backend)
    except Exception as error:  # reported as the skip reason, not swallowed
        return skipped_row(BENCHMARK, problem.size.describe(), "torch.compile", device, failure_reason("torch.compile", error))


def _torch(problem: Problem, device: str, quick: bool, compile_backend: str | None) -> dict:
    contender = "torch eager" if compile_backend is None else "torch.compile"
    dev = frameworks.torch_device(device)
    if dev is None:
        return skipped_row(BENCHMARK, problem.size.describe(), contender, device, f"torch has no {device} device here")
    frameworks.reset_peak_memory(dev)
    layers = []
    for kernel, bias in zip(problem.kernels, problem.biases):
        linear = nn.Linear(*kernel.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel.T))  # torch keeps [out, in]
            linear.bias.copy_(torch.from_numpy(bias))
        layers += [linear, nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    x, y = torch.from_numpy(problem.x).to(dev), torch.from_numpy(problem.y).to(dev)

    def train_step() -> torch.Tensor:
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    losses, timing, compile_s = frameworks.measure_torch_step(train_step, dev, quick, compile_backend)
    return _row(problem, contender, device, timing, compile_s, frameworks.torch_peak_memory(dev), losses)


def jax_jit(problem: Problem, device: str, quick: bool) -> dict:
    """The functional NNX form (PARITY.md): split once, ``jax.jit`` a pure step over the state,
    donated; compile time is ``lower(...).compile()``, timed apart."""
    dev = frameworks.jax_device(device)
    if dev is None:
        return skipped_row(BENCHMARK, problem.size.describe(), "jax.jit", device, f"jax has no {device} backend here")
    jax.clear_caches()  # compile from scratch, like every other contender
    graphdef, params = nnx.split(_NnxMLP(problem))
    optimizer = optax.adam(LEARNING_RATE)
    state = jax.device_put((params, optimizer.init(params)), dev)
    x, y = jax.device_put(problem.x, dev), jax.device_put(problem.y, dev)

    def loss_fn(params: nnx.State, x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.mean((nnx.merge(graphdef, params)(x) - y) ** 2)

    def train_step(state, x, y):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    start = time.perf_counter()
    compiled = jax.jit(train_step, donate_argnums=0).lower(state, x, y).compile()
    compile_s = time.perf_counter() - start
    holder = [state]
    del state  # donated on the first call

    def step() -> jax.Array:
        holder[0], loss = compiled(holder[0], x, y)
        return loss

    losses, _, timing = measure_steps(step, lambda: jax.block_until_ready(holder[0]), quick)
    return _row(problem, "jax.jit", device, timing, compile_s, frameworks.jax_step_memory(compiled), losses)


class _NnxMLP(nnx.Module):
    def __init__(self, problem: Problem):
        rngs = nnx.Rngs(0)  # placeholder init, overwritten with the problem's weights
        self.layers = nnx.List([nnx.Linear(*kernel.shape, rngs=rngs) for kernel in problem.kernels])
        for layer, kernel, bias in zip(self.layers, problem.kernels, problem.biases):
            layer.kernel[...] = jnp.asarray(kernel)
            layer.bias[...] = jnp.asarray(bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


CONTENDERS: dict[str, Callable[[Problem, str, bool], dict]] = {
    "torch eager": torch_eager,
    "torch.compile": torch_compiled,
    "jax.jit": jax_jit,
}


def _row(problem: Problem, contender: str, device: str, timing: Timing, compile_s, memory: dict, losses: list[float]) -> dict:
    size = problem.size
    return result_row(
        BENCHMARK, size.describe(), contender, device, timing,
        items=size.batch, unit="samples/s", flops=size.matmul_flops(), compile_s=compile_s, peak_memory=memory,
        detail=f"MSE loss, Adam lr {LEARNING_RATE}, float32", warmup_losses=losses,
    )
