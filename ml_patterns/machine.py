"""The machine a run happens on: the CPUs this process may use, pinning it to fewer, and the
environment (library versions, processor, load, thread settings) recorded beside every measurement.

Reads package metadata and the OS only, and imports no framework, so the benchmarks and
``ml-patterns compare`` can call it before torch or jax is loaded (``restrict_cpus`` must run first).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sys
from collections.abc import Iterator


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def restrict_cpus(threads: int) -> Iterator[dict]:
    """Runs the block on ``threads`` CPUs, restoring the affinity mask afterwards.

    This is how both frameworks get the same number of threads: XLA:CPU sizes its thread pool from
    the affinity mask when its backend starts and has no other setting for it (only
    ``--xla_cpu_multi_thread_eigen=false``, which means one thread), while torch takes
    ``torch.set_num_threads`` (done by ``ml_patterns_bench.harness.configured``). Every thread of the
    process is pinned, and threads started inside inherit the mask. Enter this before jax's backend
    starts: a pool started earlier keeps its size (then more threads than CPUs); the yielded record
    says which frameworks were loaded before.
    """
    available = cpu_count()
    if not 1 <= threads <= available:
        raise ValueError(f"--threads must be between 1 and the {available} CPUs available, got {threads}")
    record = {
        "threads": threads,
        "cpus_available": available,
        "frameworks_loaded_before": sorted(m for m in ("torch", "jax") if m in sys.modules),
        "how": "all CPUs of the affinity mask",
    }
    if threads == available:
        yield record
        return
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError(
            f"--threads {threads}: this OS cannot pin a process to CPUs, so XLA's thread pool cannot be limited"
        )
    mask = os.sched_getaffinity(0)
    _pin_all_threads(sorted(mask)[:threads])
    record["how"] = f"affinity mask restricted to CPUs {sorted(os.sched_getaffinity(0))}"
    try:
        yield record
    finally:
        _pin_all_threads(mask)


def _pin_all_threads(cpus) -> None:
    # Affinity belongs to each thread (pid 0 is the calling one): pin the threads that exist too.
    tids = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), cpus)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Library versions, machine and thread settings to store beside every number.

    Reads package metadata only: it imports no framework, so it is safe to call from anywhere.
    ``ml_patterns_bench.harness.describe`` adds what only the loaded frameworks can say (devices, threads,
    precision).
    """
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpus_available": cpu_count(),
        # Other processes' load makes multi-threaded timings noisy (and OpenMP's spinning barriers
        # collapse when cores are oversubscribed): check it before trusting a number.
        "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {
            name: _version(name)
            for name in ("ml-patterns", "numpy", "torch", "jax", "jaxlib", "jax-cuda12-plugin", "flax", "optax")
        },
        "thread_env": {
            key: os.environ.get(key)
            for key in (
                "OMP_NUM_THREADS",
                "MKL_NUM_THREADS",
                "XLA_FLAGS",
                "OPENBLAS_NUM_THREADS",
                "OPENBLAS_CORETYPE",
                "OMP_WAIT_POLICY",
            )
        },
    }
