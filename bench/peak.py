"""The device's matmul peak, measured in the same run as the workloads it is the yardstick for.

One large square float32 matmul per framework and device, under the run's threads and precision
policy, and with ``--precision bf16`` a bfloat16 one too (bfloat16 in and out, as autocast's
matmuls): the yardstick of the bf16-mixed rows (``common.peak_key``). The device's peak is the
better of the two frameworks' median GFLOP/s: what this machine demonstrably sustains on the
best-case kernel, so a workload's "fraction of peak" says how much of it the workload gets,
whichever framework reached it. Each row also gets the fraction of its own framework's matmul,
which separates a framework's GEMM from the rest of its step. (A fraction can exceed 1 by noise,
or when a workload's matmuls run better than the square one.)
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from ml_patterns.precision import MIXED

from . import flops
from .common import CONTENDERS, BenchContext, compile_jax, peak_key, plan_repeats, result_row, skipped_row, time_call
from .harness import RUNTIMES

# A size that takes ~50-150 ms on a few CPU cores and ~20 ms on an H100 in float32: large enough
# that the kernel, not the call, is timed.
SIZES = {"cpu": 2048, "gpu": 8192}
BENCHMARK = "matmul_peak"
DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16}  # numpy dtypes (ml_dtypes' bfloat16)
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def measure(ctx: BenchContext) -> list[dict]:
    """One row per framework, device and dtype: the matmul's median time and GFLOP/s."""
    dtypes = ("float32", "bfloat16") if MIXED in ctx.step_precisions else ("float32",)
    return [row for device in ctx.devices for dtype in dtypes for row in _measure(ctx, device, dtype)]


def _measure(ctx: BenchContext, device: str, dtype: str) -> list[dict]:
    rows = []
    n = SIZES[device]
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32).astype(DTYPES[dtype]) for _ in range(2))
    workload = f"{n}x{n} @ {n}x{n} {dtype}"
    # One contender per framework: each framework's best-case kernel, whatever compiles it.
    for contender, framework, timer in (("torch eager", "torch", _torch), ("jax.jit", "jax", _jax)):
        dev = RUNTIMES[framework].device(device)
        if dev is None:
            rows.append(skipped_row(BENCHMARK, workload, contender, device, f"{framework} has no {device} device here"))
            continue
        timing, compile_s = timer(a, b, dev, ctx.quick)
        rows.append(
            result_row(
                BENCHMARK,
                workload,
                contender,
                device,
                timing,
                items=flops.matmul(n, n, n) / 1e9,
                unit="GFLOP/s",
                flops=flops.matmul(n, n, n),
                compile_s=compile_s,
                precision=dtype,
            )
        )
    return rows


def peaks(rows: list[dict]) -> dict[str, dict[str, float]]:
    """``{peak_key: {"peak": best GFLOP/s, "torch": ..., "jax": ...}}`` from ``measure``'s rows."""
    result: dict[str, dict[str, float]] = {}
    for row in rows:
        if row["benchmark"] == BENCHMARK and "timing" in row:
            result.setdefault(peak_key(row), {})[CONTENDERS[row["contender"]].framework] = row["throughput"]["value"]
    for by_framework in result.values():
        by_framework["peak"] = max(by_framework.values())
    return result


def _torch(a: np.ndarray, b: np.ndarray, dev: torch.device, quick: bool):
    ta, tb = (torch.from_numpy(x.astype(np.float32)).to(dev, TORCH_DTYPES[x.dtype.name]) for x in (a, b))
    out = torch.empty_like(ta)  # preallocated: the allocator is not what is measured

    def call() -> None:
        torch.matmul(ta, tb, out=out)

    return _time(call, lambda: RUNTIMES["torch"].wait(dev), quick), None


def _jax(a: np.ndarray, b: np.ndarray, dev: jax.Device, quick: bool):
    ja, jb = jax.device_put(a, dev), jax.device_put(b, dev)
    matmul, compile_s = compile_jax(jax.jit(jnp.matmul), ja, jb)
    last = [None]

    def call() -> None:
        last[0] = matmul(ja, jb)

    # One device runs its work in order: when the last product is ready, all are.
    return _time(call, lambda: RUNTIMES["jax"].wait(dev, last[0]), quick), compile_s


def _time(call, sync, quick: bool):
    start = time.perf_counter()
    call()
    sync()
    number, repeats = plan_repeats(time.perf_counter() - start, quick)
    return time_call(call, repeats=repeats, warmup=1, number=number, sync=sync)
