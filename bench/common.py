"""What every benchmark shares: timing by the rules, and the environment recorded with each number.

Timing rules (STYLE.md, habit 9): warm-up calls first (compilation and caches happen there and are
timed apart by the caller), a synchronizing ``fn`` (it must block until its work is done), the
median of the repeats as the headline, and the spread beside it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call over ``repeats`` timed calls."""

    median_s: float
    min_s: float
    max_s: float
    iqr_s: float  # interquartile range: the spread that one slow outlier does not dominate
    repeats: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def time_call(fn: Callable[[], object], *, repeats: int, warmup: int = 1, number: int = 1) -> Timing:
    """Times ``fn`` (which must synchronize) ``repeats`` times, each timing ``number`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return Timing(
        median_s=statistics.median(samples),
        min_s=min(samples),
        max_s=max(samples),
        iqr_s=quartiles[2] - quartiles[0],
        repeats=repeats,
    )


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def environment() -> dict:
    """Library versions, machine and thread settings to store beside every number.

    Reads package metadata only: it imports no framework, so it is safe to call from anywhere.
    """
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus_available": cpu_count(),
        "versions": {
            name: _version(name) for name in ("ml-patterns", "numpy", "torch", "jax", "jaxlib", "flax", "optax")
        },
        "thread_env": {
            key: os.environ.get(key)
            for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE")
        },
    }
