"""The device's matmul peak, measured in the same run as the workloads it is the yardstick for.

One large square float32 matmul per framework and device, under the run's threads and precision
policy. The device's peak is the better of the two frameworks' median GFLOP/s: what this machine
demonstrably sustains on the best-case kernel, so a workload's "fraction of peak" says how much of
it the workload gets, whichever framework reached it. Each row also gets the fraction of its own
framework's matmul, which separates a framework's GEMM from the rest of its step. (A fraction can
exceed 1 by noise, or when a workload's matmuls run better than the square one.)
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from bench import frameworks
from bench.common import FRAMEWORK, BenchContext, plan_repeats, result_row, skipped_row, time_call

# A size that takes ~50-150 ms on a few CPU cores and ~20 ms on an H100 in float32: large enough
# that the kernel, not the call, is timed.
SIZES = {"cpu": 2048, "gpu": 8192}
BENCHMARK = "matmul_peak"


def measure(ctx: BenchContext) -> list[dict]:
    """One row per framework and device: the matmul's median time and GFLOP/s."""
    rows = []
    for device in ctx.devices:
        n = SIZES[device]
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        workload = f"{n}x{n} @ {n}x{n} float32"
        for contender, timer in (("torch eager", _torch), ("jax.jit", _jax)):
            timed = timer(a, b, device, ctx.quick)
            if timed is None:
                rows.append(skipped_row(BENCHMARK, workload, contender, device, f"{FRAMEWORK[contender]} has no {device} device here"))
                continue
            timing, compile_s = timed
            rows.append(result_row(BENCHMARK, workload, contender, device, timing, items=2 * n**3 / 1e9,
                                   unit="GFLOP/s", flops=2 * n**3, compile_s=compile_s))
    return rows


def peaks(rows: list[dict]) -> dict[str, dict[str, float]]:
    """``{device: {"peak": best GFLOP/s, "torch": ..., "jax": ...}}`` from ``measure``'s rows."""
    result: dict[str, dict[str, float]] = {}
    for row in rows:
        if row["benchmark"] == BENCHMARK and "timing" in row:
            result.setdefault(row["device"], {})[FRAMEWORK[row["contender"]]] = row["throughput"]["value"]
    for by_framework in result.values():
        by_framework["peak"] = max(by_framework.values())
    return result


def _torch(a: np.ndarray, b: np.ndarray, device: str, quick: bool):
    dev = frameworks.torch_device(device)
    if dev is None:
        return None
    ta, tb = torch.from_numpy(a).to(dev), torch.from_numpy(b).to(dev)
    out = torch.empty_like(ta)  # preallocated: the allocator is not what is measured

    def call() -> None:
        torch.matmul(ta, tb, out=out)

    return _time(call, frameworks.torch_sync(dev) or (lambda: None), quick), None


def _jax(a: np.ndarray, b: np.ndarray, device: str, quick: bool):
    dev = frameworks.jax_device(device)
    if dev is None:
        return None
    ja, jb = jax.device_put(a, dev), jax.device_put(b, dev)
    start = time.perf_counter()
    matmul = jax.jit(jnp.matmul).lower(ja, jb).compile()
    compile_s = time.perf_counter() - start
    last = [None]

    def call() -> None:
        last[0] = matmul(ja, jb)

    def sync() -> None:
        # One device runs its work in order: when the last product is ready, all are.
        jax.block_until_ready(last[0])

    return _time(call, sync, quick), compile_s


def _time(call, sync, quick: bool):
    start = time.perf_counter()
    call()
    sync()
    number, repeats = plan_repeats(time.perf_counter() - start, quick)
    return time_call(call, repeats=repeats, warmup=1, number=number, sync=sync)
