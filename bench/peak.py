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

import jax.numpy as jnp
import numpy as np

from ml_patterns.precision import MIXED

from . import flops
from .common import CONTENDERS, BenchContext, peak_key, plan_repeats, result_row, skipped_row, time_call
from .harness import RUNTIMES

# A size that takes ~50-150 ms on a few CPU cores and ~20 ms on an H100 in float32: large enough
# that the kernel, not the call, is timed.
SIZES = {"cpu": 2048, "gpu": 8192}
BENCHMARK = "matmul_peak"
DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16}  # numpy dtypes (ml_dtypes' bfloat16)
MATMUL_CONTENDERS = ("torch eager", "jax.jit")


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
    for contender in MATMUL_CONTENDERS:
        runtime = RUNTIMES[CONTENDERS[contender].framework]
        dev = runtime.device(device)
        if dev is None:
            reason = f"{CONTENDERS[contender].framework} has no {device} device here"
            rows.append(skipped_row(BENCHMARK, workload, contender, device, reason))
            continue
        call, sync, compile_s = runtime.matmul(a, b, dev)
        timing = _time(call, sync, ctx.quick)
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


def _time(call, sync, quick: bool):
    start = time.perf_counter()
    call()
    sync()
    number, repeats = plan_repeats(time.perf_counter() - start, quick)
    return time_call(call, repeats=repeats, warmup=1, number=number, sync=sync)
