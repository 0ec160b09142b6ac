"""Masked cross-entropy, forward + backward: time and peak extra memory, per backend, against torch's
own ``F.cross_entropy(ignore_index=-100)`` (the baseline) and the optax recipe of docs/PARITY.md.

Each timed call computes the mean loss over the unmasked positions (15% masked, as padding) and its
gradient with respect to the float32 logits.

Runs on every device of the run. Peak extra memory is measured, never estimated. On the CPU each
contender runs once in a fresh Python process (``python -m ml_patterns_bench.losses --peak ...``) that loads
only its own framework, builds the inputs, warms up on a tiny input, resets the kernel's peak-RSS
counter (``/proc/self/clear_refs``), runs one forward + backward and reads ``VmHWM``. Reported:
that peak minus the RSS before the call, minus the gradient's own bytes (the output every
contender must return). On a GPU: torch's allocator peak over the call minus what it held before
and the gradient; JAX's XLA account. JAX rows always carry XLA's own account
(``compiled.memory_analysis()``: ``temp_size_in_bytes`` is what the program needs beyond its
arguments and outputs).

Each contender is a row of ``CONTENDERS`` with its own builder; framework imports happen inside the
builders, so that a measuring process loads only the framework it measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .common import BenchContext, time_call

SHAPES = ((64, 128, 1024), (8, 512, 32768))
IGNORE = -100


@dataclasses.dataclass(frozen=True)
class Built:
    """One contender's forward + backward, ready on a device.

    ``call()`` runs it, synchronized, and returns the gradient (``[batch, length, vocab]``, like the
    logits); ``compile_s`` is its compile time apart (``None``: nothing compiled ahead);
    ``xla_memory`` XLA's memory analysis of the compiled call (``None``: not XLA's);
    ``gpu_extra()`` is ``(bytes, how, measure)`` on a GPU: its peak memory beyond inputs and gradient.
    """

    call: Callable[[], object]
    compile_s: float | None
    xla_memory: dict | None
    gpu_extra: Callable[[], tuple[int, str, str]]


@dataclasses.dataclass(frozen=True)
class LossContender:
    """A row of the table: its label, and ``build(shape, device) -> Built`` (importing its framework)."""

    label: str
    build: Callable[[tuple[int, int, int], str], Built]


def _inputs(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(shape, dtype=np.float32) * 2
    mask = rng.random(shape[:2]) >= 0.15
    targets = np.where(mask, rng.integers(0, shape[2], shape[:2]), IGNORE)
    return logits, targets, mask


def _build_torch(loss_fn: Callable[[], Callable], shape: tuple[int, int, int], device: str = "cpu") -> Built:
    """``loss_fn()``: ``loss(logits, targets, mask) -> mean loss`` on torch tensors."""
    import torch

    from torch_impl import runtime

    loss = loss_fn()
    logits, targets, mask = _inputs(shape)
    dev = runtime.device(device)
    x = torch.from_numpy(logits).to(dev).requires_grad_()
    t, m = torch.from_numpy(targets).to(dev), torch.from_numpy(mask).to(dev)

    def call():
        grad = torch.autograd.grad(loss(x, t, m), x)[0]
        runtime.wait(dev)
        return grad

    def gpu_extra() -> tuple[int, str, str]:
        call()  # kernels loaded, caches warm
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        grad = call()
        extra = torch.cuda.max_memory_allocated() - before - grad.nbytes
        return extra, "torch.cuda peak over the call, minus before and the gradient", "allocator peak"

    return Built(call, None, None, gpu_extra)


def _torch_baseline() -> Callable:
    import torch.nn.functional as F

    def loss(x, t, m):
        return F.cross_entropy(x.view(-1, x.shape[-1]), t.view(-1), ignore_index=IGNORE)

    return loss


def _torch_ours() -> Callable:
    from torch_impl.losses import masked_cross_entropy

    return masked_cross_entropy


def _build_jax(loss_fn: Callable[[], Callable], shape: tuple[int, int, int], device: str = "cpu") -> Built:
    """``loss_fn()``: ``loss(logits, targets, mask) -> mean loss`` on JAX arrays, jitted here."""
    import jax

    from jax_impl import runtime

    logits, targets, mask = _inputs(shape)
    # Transfers are asynchronous: wait, so that a memory measurement does not count the copy.
    args = jax.block_until_ready(jax.device_put((logits, targets.astype(np.int32), mask), runtime.device(device)))
    compiled, compile_s = runtime.compile_ahead(jax.jit(jax.grad(loss_fn())), *args)
    analysis = compiled.memory_analysis()
    memory = {
        key: int(getattr(analysis, key))
        for key in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")
    }

    def gpu_extra() -> tuple[int, str, str]:
        how = "XLA memory analysis: temporaries of the compiled call"
        return memory["temp_size_in_bytes"], how, "static estimate"

    return Built(lambda: jax.block_until_ready(compiled(*args)), compile_s, memory, gpu_extra)


def _jax_ours() -> Callable:
    from jax_impl.losses import masked_cross_entropy

    return masked_cross_entropy


def _optax_recipe() -> Callable:
    import jax.numpy as jnp
    import optax

    def loss(x, t, m):
        weights = m.astype(jnp.float32)
        per_position = optax.softmax_cross_entropy_with_integer_labels(x, jnp.where(m, t, 0))
        return (per_position * weights).sum() / weights.sum()

    return loss


# The baseline first: every row's time is divided by its.
CONTENDERS = {
    "torch_baseline": LossContender(
        "torch F.cross_entropy(ignore_index=-100) (baseline)", functools.partial(_build_torch, _torch_baseline)
    ),
    "torch_ours": LossContender("torch_impl.masked_cross_entropy", functools.partial(_build_torch, _torch_ours)),
    "jax_ours": LossContender("jax_impl.masked_cross_entropy, jax.jit", functools.partial(_build_jax, _jax_ours)),
    "jax_optax": LossContender(
        "optax integer-label CE, sanitized + masked mean, jax.jit", functools.partial(_build_jax, _optax_recipe)
    ),
}


def run(ctx: BenchContext) -> list[dict]:
    """The inputs are synthetic logits of the sizes a language model makes (``ctx.data_dir`` is unused)."""
    rows = []
    for device in ctx.devices:
        for shape in SHAPES[:1] if ctx.quick else SHAPES:
            rows += _shape_rows(shape, device, ctx.quick)
    return rows


def _shape_rows(shape, device: str, quick: bool) -> list[dict]:
    logits_bytes = int(np.prod(shape)) * 4
    baseline_s = None
    rows = []
    for name, contender in CONTENDERS.items():
        built = contender.build(shape, device)
        repeats = 3 if quick else (7 if logits_bytes < 2**28 else 5)
        timing = time_call(built.call, repeats=repeats, warmup=1)
        baseline_s = baseline_s or timing.median_s
        extra, how, measure = _peak_extra_bytes(name, built, shape, device)
        rows.append(
            {
                "benchmark": "masked_cross_entropy",
                "workload": f"forward+backward, logits [{shape[0]}, {shape[1]}, {shape[2]}] float32",
                "contender": contender.label,
                "device": device,
                "timing": timing.as_dict(),
                "throughput": {"value": shape[0] * shape[1] / timing.median_s, "unit": "positions/s"},
                "compile_s": built.compile_s,
                "peak_memory": {"bytes": extra, "how": how, "measure": measure},
                "time_vs_baseline": timing.median_s / baseline_s,
                "extra_memory_in_logits_buffers": None if extra is None else extra / logits_bytes,
                "xla_memory_analysis": built.xla_memory,
                "detail": f"15% of positions masked; logits buffer {logits_bytes / 2**20:.0f} MiB",
            }
        )
        del built  # its device buffers, before the next contender allocates its own
    return rows


def _peak_extra_bytes(name: str, built: Built, shape, device: str) -> tuple[int | None, str, str]:
    """``(bytes, how, measure)``: the call's peak memory beyond its inputs and its gradient (module
    docstring). On a GPU the contender's own account (``Built.gpu_extra``): JAX's is XLA's static
    estimate and torch's its allocator's peak, two different measures, labelled as such
    (``measure``) and never divided by each other."""
    if device == "gpu":
        return built.gpu_extra()
    if not Path("/proc/self/clear_refs").exists():
        return None, "n/a: no resettable peak-RSS counter (not Linux)", "none"
    command = [sys.executable, "-m", "ml_patterns_bench.losses", "--peak", name, *map(str, shape)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
    extra = json.loads(done.stdout.strip().splitlines()[-1])["extra_bytes"]
    how = "peak RSS of one forward+backward in a fresh process, minus RSS before, minus the gradient"
    return extra, how, "process RSS"


def _measure_peak(name: str, shape: tuple[int, int, int]) -> dict:
    build = CONTENDERS[name].build
    build((2, 3, 5), "cpu").call()  # load kernels and lazily initialized state on a tiny input
    call = build(shape, "cpu").call
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:  # VmHWM := VmRSS
        handle.write("5")
    grad = call()
    peak = _status_kib("VmHWM")
    grad_bytes = int(np.prod(shape)) * 4
    assert tuple(grad.shape) == shape
    return {"extra_bytes": (peak - before) * 1024 - grad_bytes, "grad_bytes": grad_bytes}


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="measure one contender's peak extra memory (used by run())")
    parser.add_argument("--peak", choices=sorted(CONTENDERS), required=True)
    parser.add_argument("shape", type=int, nargs=3)
    arguments = parser.parse_args()
    print(json.dumps(_measure_peak(arguments.peak, tuple(arguments.shape))))
