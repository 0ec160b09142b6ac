"""Train step of an MLP at three sizes, for every contender (torch eager, ``torch.compile``, ``jax.jit``).

One step is forward, MSE loss, backward and an Adam update on a fixed batch (data loading is
benchmarked apart). Both sides start from the same numpy weights and batch, so they do the same
arithmetic; each row keeps the losses of its warm-up steps as the proof (they agree across
contenders to float32 rounding).

The largest size is matmul-bound, so its GFLOP/s against the device's measured matmul peak
(``ml_patterns_bench.peak``) says how much of the machine each framework's training step gets.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx
from torch import nn

import jax_impl.precision
import torch_impl.precision

from . import flops
from .common import BenchContext
from .harness import Step, contender_rows

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
            rows += contender_rows(
                BENCHMARK,
                size.describe(),
                step(problem),
                ctx,
                device,
                items=size.batch,
                unit="samples/s",
                flops=flops.mlp_train_step(size.batch, size.width, size.depth),
                detail=f"MSE loss, Adam lr {LEARNING_RATE}",
            )
    return rows


def step(problem: Problem) -> Step:
    return Step(torch=functools.partial(torch_step, problem), jax=functools.partial(jax_step, problem))


def torch_step(problem: Problem, device: torch.device, precision: str = "float32"):
    layers = []
    for kernel, bias in zip(problem.kernels, problem.biases):
        linear = nn.Linear(*kernel.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel.T))  # torch keeps [out, in]
            linear.bias.copy_(torch.from_numpy(bias))
        layers += [linear, nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, fused=True)
    x, y = torch.from_numpy(problem.x).to(device), torch.from_numpy(problem.y).to(device)

    def train_step() -> torch.Tensor:
        with torch_impl.precision.autocast(precision, device):
            loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return train_step


def jax_step(problem: Problem, device: jax.Device, precision: str = "float32"):
    """The functional NNX form (docs/PARITY.md, JAX habits): split once, ``jax.jit`` a pure step
    over the state, donated. bf16-mixed: ``jax_impl.precision``'s policy on the merged model."""
    graphdef, params = nnx.split(_NnxMLP(problem))
    optimizer = optax.adam(LEARNING_RATE)
    dtype = jax_impl.precision.compute_dtype(precision)

    def loss_fn(params: nnx.State, x: jax.Array, y: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, params)
        if dtype is not None:
            jax_impl.precision.autocast(model, dtype)
        return jnp.mean((model(x) - y) ** 2)  # a bfloat16 output minus float32 targets: float32

    def train_step(state, x, y):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return jax.jit(train_step, donate_argnums=0), (params, optimizer.init(params)), (problem.x, problem.y)


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
