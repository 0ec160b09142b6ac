"""What every benchmark shares: the context it runs in, timing by the rules and the result row (the
machine and environment recorded with each number: ``ml_patterns.machine``). Imports no framework:
the runner pins the CPUs before torch or jax is loaded (``ml_patterns.machine.restrict_cpus``).

Timing rules: ``ml_patterns.timing`` (warm-up apart, a sync inside the timed region, the median of
the repeats and the spread beside it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ml_patterns.parity import PRECISIONS
from ml_patterns.precision import MIXED

# The timing rules are the core's (the backends' ``measure_step`` times by them too); the benchmarks
# take them from here with the rest of what they share.
from ml_patterns.timing import Timing as Timing
from ml_patterns.timing import failure_reason as failure_reason
from ml_patterns.timing import plan_repeats as plan_repeats
from ml_patterns.timing import time_call as time_call


@dataclasses.dataclass(frozen=True)
class Contender:
    """A way to run a workload's step: a framework, compiled or not. Every workload that races the
    frameworks takes its contenders from ``CONTENDERS`` (``ml_patterns_bench.harness`` runs them through
    their framework's ``measure.measure_step``); a new way to run (a data-parallel step, another
    compiler) is one more row here and what it needs in that ``measure_step``."""

    name: str
    framework: str  # "torch" or "jax": the runtime (torch_impl.runtime / jax_impl.runtime) it uses
    compile_backend: str | None = None  # torch.compile's backend; None: eager (torch) or jax.jit
    quick: bool = True  # part of a --quick run


CONTENDERS = {
    contender.name: contender
    for contender in (
        Contender("torch eager", "torch"),
        # --quick leaves torch.compile out: its cold compile alone takes ~50 s on two cores.
        Contender("torch.compile", "torch", compile_backend="inductor", quick=False),
        Contender("jax.jit", "jax"),
    )
}
QUICK_CONTENDERS = tuple(name for name, contender in CONTENDERS.items() if contender.quick)
# The framework-free workloads (data loading) use this contender name.
SHARED = "numpy (shared by both backends)"


# --precision: a float32 matmul policy, or "bf16": every train-step workload and the matmul peak in
# bfloat16 as well (train steps bf16-mixed: float32 master weights, bfloat16 compute; the peak's
# matmul bfloat16 in and out), beside the float32 rows, under the float32 policy.
BF16 = "bf16"
BENCH_PRECISIONS = {
    **PRECISIONS,
    BF16: "float32 and bf16-mixed rows side by side (full float32 matmuls for the float32 ones)",
}


@dataclasses.dataclass(frozen=True)
class BenchContext:
    """What the runner hands every workload: ``run(ctx) -> list[dict]`` of ``result_row``s.

    A workload runs on each device of ``devices`` (host-side work, such as reading the dataset,
    runs on the CPU whatever the device, and says so), each contender of ``contenders`` that
    races there (``ml_patterns_bench.harness``), and returns a ``skipped_row`` naming the reason for each one
    it cannot run.
    """

    data_dir: Path
    quick: bool
    devices: tuple[str, ...]  # "cpu", "gpu"
    threads: int  # CPUs both frameworks run on (torch intra-op threads = XLA:CPU's pool)
    precision: str  # a key of BENCH_PRECISIONS
    contenders: tuple[str, ...] = tuple(CONTENDERS)

    @property
    def step_precisions(self) -> tuple[str, ...]:
        """The training precisions every train step runs in (``ml_patterns.precision``)."""
        return ("float32", MIXED) if self.precision == BF16 else ("float32",)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "data_dir": str(self.data_dir)}


def peak_key(row: dict) -> str:
    """The key of the run's matmul peaks (``ml_patterns_bench.peak.peaks``) a row is measured
    against: its device, with `` bfloat16`` for the bfloat16 matmul and the bf16-mixed train steps."""
    return f"{row['device']} bfloat16" if row.get("precision") in (MIXED, "bfloat16") else row["device"]


def result_row(
    benchmark: str,
    workload: str,
    contender: str,
    device: str,
    timing: Timing,
    *,
    items: float,
    unit: str,
    detail: str = "",
    flops: float | None = None,
    compile_s: float | None = None,
    peak_memory: dict | None = None,
    **extra: object,
) -> dict:
    """One measured result.

    Args:
        items: what one call processes (samples, records), for the throughput ``items / median``.
        flops: floating-point operations one call performs, counted analytically (matmuls); the
            runner turns it into GFLOP/s and the fraction of the device's measured matmul peak.
        compile_s: compilation time, measured apart from ``timing``; ``None`` where nothing compiles.
        peak_memory: ``{"bytes": int | None, "how": str}``: the value and how it was measured.
        extra: further JSON-serializable fields (e.g. checks).
    """
    return {
        "benchmark": benchmark,
        "workload": workload,
        "contender": contender,
        "device": device,
        "timing": timing.as_dict(),
        "throughput": {"value": items / timing.median_s, "unit": unit},
        "flops_per_call": flops,
        "compile_s": compile_s,
        "peak_memory": peak_memory,
        "detail": detail,
        **extra,
    }


def skipped_row(benchmark: str, workload: str, contender: str, device: str, reason: str) -> dict:
    """A contender that did not run here, and why; the runner lists these apart from the results."""
    return {"benchmark": benchmark, "workload": workload, "contender": contender, "device": device, "skipped": reason}
