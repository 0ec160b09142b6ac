"""Where and how JAX runs; the contract: ``torch_impl.runtime``.

Divergences, and why:

- ``peak_memory`` reads the device's ``memory_stats()`` (GPU). XLA cannot reset its peak, so
  ``reset_peak_memory`` notes the peak so far: a later peak above it was reached after the reset
  (the phase's own peak, exact); one that did not move is reported as an upper bound, saying so.
- ``wait(device, value)`` blocks on ``value`` (JAX dispatches asynchronously, per array).
- ``set_threads`` sets nothing: XLA:CPU sized its thread pool from the affinity mask when its
  backend started (``ml_patterns.machine.restrict_cpus``), and has no other setting for it.
- ``compile_loss`` raises: every JAX train step is a ``jax.jit`` program already.
- ``count_step_flops`` counts with XLA's cost analysis of the jitted forward and backward
  (``compiled.cost_analysis()["flops"]``): every floating-point operation of the compiled program
  after XLA's simplifications, elementwise work included, so it is not torch's FlopCounterMode's
  number (matmuls and convolutions only) for the same model.
- ``matmul`` compiles ahead of time (``compile_ahead``: ``jit(...).lower(...).compile()``), its
  compile timed apart. ``compile_ahead`` is JAX's alone: torch has no ahead-of-time compile of a
  step (``torch.compile`` compiles inside the first calls).
- ``step_sync_guard`` is ``jax.transfer_guard("disallow")`` around all the trainer does: only its
  explicit ``device_put``/``device_get`` move data, so the epoch's end passes it too.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.metadata
import os
import time
from collections.abc import Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_impl.models import Functional, functional
from jax_impl.precision import precision_policy as precision_policy
from jax_impl.precision import set_precision as set_precision
from jax_impl.state import tree_to_numpy
from jax_impl.training import to_device
from ml_patterns.errors import UsageError
from ml_patterns.io import private_directory


def device(kind: str) -> jax.Device | None:
    if kind not in ("cpu", "gpu"):
        raise UsageError(f"unknown device kind {kind!r}: use 'cpu' or 'gpu'")
    try:
        return jax.devices(kind)[0]
    except RuntimeError:  # "Unknown backend: 'gpu' requested, but no platforms ... are present"
        return None


def select_device(choice: str = "auto") -> jax.Device:
    if choice == "auto":
        return device("gpu") or device("cpu")
    found = device(choice)
    if found is None:
        raise UsageError(f"--device {choice}: jax has no GPU backend (install jax[cuda12] on a GPU machine)")
    return found


def precision() -> dict:
    return {"jax_default_matmul_precision": jax.config.jax_default_matmul_precision}


def describe(dev: jax.Device) -> dict:
    gpu = dev.platform == "gpu"
    return {
        "device": {
            "kind": "gpu" if gpu else "cpu",
            "name": dev.device_kind if gpu else f"CPU ({os.cpu_count()} cores)",
        },
        "versions": {name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "flax", "optax")},
        "threads": os.environ.get("XLA_FLAGS") or "XLA default (the CPUs of the affinity mask)",
        "precision": f"float32; jax_default_matmul_precision={jax.config.jax_default_matmul_precision}",
    }


# Per device: the allocator's peak when reset_peak_memory was last called (module docstring).
_PEAK_AT_RESET: dict[jax.Device, int] = {}


def reset_peak_memory(dev: jax.Device) -> None:
    if dev.platform == "gpu":
        _PEAK_AT_RESET[dev] = (dev.memory_stats() or {}).get("peak_bytes_in_use", 0)


def peak_memory(dev: jax.Device) -> dict | None:
    if dev.platform != "gpu":
        return None
    peak = (dev.memory_stats() or {}).get("peak_bytes_in_use")
    before = _PEAK_AT_RESET.get(dev)
    how = "XLA allocator peak, jax Device.memory_stats()['peak_bytes_in_use']"
    if peak is not None and before is not None and peak <= before:
        how = f"at most this: {how} did not rise after the reset (XLA cannot reset it)"
    return {"bytes": peak, "how": how, "measure": "allocator peak"}


def wait(dev: jax.Device, value: object = None) -> None:
    if value is not None:
        jax.block_until_ready(value)


def release_memory() -> None:
    gc.collect()


def predict(model, batch: Mapping, dev: jax.Device, task: str | None = None) -> dict[str, np.ndarray]:
    model.eval()
    fn, params, rest = functional(model)
    # One jitted program per batch shape (cached across calls), not the model run op by op.
    outputs = _apply(fn, params, rest, to_device(batch, dev), **({} if task is None else {"task": task}))
    return tree_to_numpy(outputs)


@functools.partial(jax.jit, static_argnums=0, static_argnames="task")
def _apply(fn: Functional, params, rest, batch, task: str | None = None):
    return fn.apply(params, rest, batch, **({} if task is None else {"task": task}))


def enable_compile_cache(directory: str | os.PathLike) -> dict:
    """JAX's persistent compilation cache in ``directory`` (created, mode 0700), for every program:
    the defaults skip programs that compile in under a second, which is all of ours on a CPU."""
    path = private_directory(directory, "the compile cache")
    entries = sum(1 for _ in path.iterdir())
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # no size floor, and no override of it
    return {"compile_cache": str(path), "entries_before": entries}


def compile_loss(model) -> None:
    """Not offered: JAX's Trainer compiles its steps already; the compiled contender is torch.compile
    (``torch_impl.runtime``)."""
    raise ValueError("JAX's train steps are always compiled (jax.jit): the compiled contender is torch's alone")


def count_step_flops(model: nnx.Module, batch: Mapping, dev: jax.Device) -> dict:
    """The FLOPs of one training step's forward and backward pass on ``batch`` (numpy):
    ``{"flops": float, "counter": what counted them}``, from XLA's cost analysis of the jitted
    gradient computation (every floating-point operation, elementwise ones included: more than
    torch's FlopCounterMode counts for the same step). The model is not touched; the optimizer's
    update is not counted."""
    fn, params, rest = functional(model)
    key = jax.random.key(0)

    def gradients(params, rest, batch):
        return jax.grad(lambda p: fn.compute_loss(p, rest, batch, key=key, train=True)[0])(params)

    compiled = jax.jit(gradients).lower(params, rest, to_device(batch, dev)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # jax < 0.4.36 returned one dict per program
    return {"flops": float(cost["flops"]), "counter": "XLA's cost analysis (every floating-point operation)"}


def float64_reference(model, prepare):
    """Not offered: the float64 anchor is a run of the reference side, torch (``torch_impl.runtime``)."""
    raise ValueError("the float64 anchor is a torch run (the reference side); JAX runs are measured against it")


def rounding_noise(seed: int):
    """Not offered: the verdict's ensemble is made of runs of the reference side, torch (``torch_impl.runtime``)."""
    raise ValueError(
        "the verdict's ensemble is made of torch runs (the reference side); JAX runs are judged against it"
    )


def padded_batch_rows(batch_size: int) -> int | None:
    # One program per batch shape: the short last batch padded to the full size runs theirs.
    return batch_size


def run_data_parallel(fn: Callable, devices: int, choice: str, *args) -> None:
    if devices == 1:
        fn(None, *args)
        return
    from jax_impl import distributed

    platform = select_device(choice).platform
    available = jax.devices(platform)
    if len(available) < devices:
        raise UsageError(f"--devices {devices} but JAX sees {len(available)} {platform} device(s)")
    fn(distributed.setup(available[:devices]), *args)


def gather_model(model: nnx.Module, dev: jax.Device) -> None:
    nnx.update(model, to_device(nnx.state(model), dev))  # replicated over the mesh: one copy, on dev


# -- what the benchmarks and the GPU check time and probe (torch_impl.runtime's contract) ---------
def to_numpy(value: jax.Array) -> np.ndarray:
    return np.asarray(jax.device_get(value))


def set_threads(threads: int) -> None:
    pass  # module docstring: XLA's pool was sized when the backend started


def bare_train_step(trainer) -> tuple[Callable[[Mapping], jax.Array], Callable[[], None]]:
    """The trainer's jitted step over its state, the state donated from call to call."""
    holder = [trainer.state]

    def step(batch: Mapping) -> jax.Array:
        holder[0], metrics = trainer.train_step(holder[0], batch)
        return metrics["loss"]

    return step, lambda: wait(trainer.device, holder[0])


def matmul(a: np.ndarray, b: np.ndarray, dev: jax.Device) -> tuple[Callable[[], jax.Array], Callable[[], None], float]:
    """``jnp.matmul`` jitted, traced under the precision policy in force and compiled here."""
    ja, jb = jax.device_put(a, dev), jax.device_put(b, dev)
    compiled, compile_s = compile_ahead(jax.jit(jnp.matmul), ja, jb)
    last = [None]

    def call() -> jax.Array:
        last[0] = compiled(ja, jb)
        return last[0]

    # One device runs its work in order: when the last product is ready, all are.
    return call, lambda: wait(dev, last[0]), compile_s


def compile_ahead(jitted: Callable, *args) -> tuple[Callable, float]:
    """``(compiled, seconds)``: a ``jax.jit`` function compiled ahead of time for ``args``, timed on
    its own: the one place a benchmark's JAX compile time is measured (``matmul``,
    ``measure.measure_step``, the loss benchmark)."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


@contextlib.contextmanager
def step_sync_guard(trainer) -> Iterator[None]:
    with jax.transfer_guard("disallow"):
        yield


def optimizer_state_on(trainer, dev: jax.Device) -> bool:
    return all(leaf.devices() == {dev} for leaf in jax.tree.leaves(trainer.state))
