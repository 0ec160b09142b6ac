"""What every benchmark shares: the context it runs in, timing by the rules and the result row (the
machine and environment recorded with each number: ``ml_patterns.machine``). Imports no framework:
the runner pins the CPUs before torch or jax is loaded (``ml_patterns.machine.restrict_cpus``).

Timing rules (as nanoGPT's bench.py; docs/ARCHITECTURE.md): warm-up calls first (compilation and
caches happen there and are timed apart by the caller), a synchronization inside the timed region
(``block_until_ready`` / ``torch.cuda.synchronize``), the median of the repeats as the headline, and
the spread beside it.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from ml_patterns.parity import PRECISIONS
from ml_patterns.precision import MIXED


@dataclasses.dataclass(frozen=True)
class Contender:
    """A way to run a workload's step: a framework, compiled or not. Every workload that races the
    frameworks takes its contenders from ``CONTENDERS`` (``ml_patterns_bench.harness`` runs them); a new way to
    run (a data-parallel step, another compiler) is one more row here and one branch in the harness."""

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


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call over ``repeats`` timed samples of ``number`` calls each."""

    median_s: float
    min_s: float
    max_s: float
    iqr_s: float  # interquartile range: the spread that one slow outlier does not dominate
    repeats: int
    number: int = 1

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_samples(cls, samples: list[float], number: int = 1) -> Timing:
        """The summary of per-call ``samples`` (seconds), each the mean of ``number`` calls."""
        quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
        return cls(
            median_s=statistics.median(samples),
            min_s=min(samples),
            max_s=max(samples),
            iqr_s=quartiles[2] - quartiles[0],
            repeats=len(samples),
            number=number,
        )


def peak_key(row: dict) -> str:
    """The key of the run's matmul peaks (``ml_patterns_bench.peak.peaks``) a row is measured
    against: its device, with `` bfloat16`` for the bfloat16 matmul and the bf16-mixed train steps."""
    return f"{row['device']} bfloat16" if row.get("precision") in (MIXED, "bfloat16") else row["device"]


def time_call(
    fn: Callable[[], object],
    *,
    repeats: int,
    warmup: int = 1,
    number: int = 1,
    sync: Callable[[], object] | None = None,
) -> Timing:
    """Times ``repeats`` samples of ``number`` calls of ``fn``, then ``sync()``, per call.

    Without ``sync``, ``fn`` itself must block until its work is done. With it, ``fn`` may return
    as soon as its work is queued (CUDA, JAX's async dispatch) and ``sync`` blocks once per sample,
    inside the timed region: back-to-back steps, as in a training loop, with no host sync per step.
    """
    for _ in range(warmup):
        fn()
    if sync is not None:
        sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        if sync is not None:
            sync()
        samples.append((time.perf_counter() - start) / number)
    return Timing.from_samples(samples, number)


def plan_repeats(call_s: float, quick: bool) -> tuple[int, int]:
    """``(number, repeats)`` for a call that takes about ``call_s`` seconds.

    A sample batches calls until it lasts ~10 ms (timer and sync costs stay negligible); the full
    suite takes 7 to 50 samples, about 2 s per contender; ``quick`` takes 5.
    """
    call_s = max(call_s, 1e-7)
    number = max(1, math.ceil(0.01 / call_s))
    if quick:
        return number, 5
    return number, min(50, max(7, math.ceil(2.0 / (call_s * number))))


# Train steps run before timing: the first compiles (torch.compile) and creates the optimizer's
# state (torch); torch.compile may recompile on the second. Their losses are kept as the check
# that the contenders ran the same arithmetic.
WARMUP_STEPS = 3


def measure_steps(
    step: Callable[[], object], sync: Callable[[], object], quick: bool
) -> tuple[list[float], list[float], Timing]:
    """``(warm-up losses, warm-up seconds, timing)`` of a train step returning its loss.

    ``WARMUP_STEPS`` steps first, each synchronized and timed alone, then the timed steps back to
    back (``plan_repeats`` from the last warm-up step's time, ``sync`` once per sample).
    """
    losses, warmup_s = [], []
    for _ in range(WARMUP_STEPS):
        start = time.perf_counter()
        losses.append(step())
        sync()
        warmup_s.append(time.perf_counter() - start)
    number, repeats = plan_repeats(warmup_s[-1], quick)
    timing = time_call(step, repeats=repeats, warmup=0, number=number, sync=sync)
    return [float(loss) for loss in losses], warmup_s, timing


def compile_jax(jitted: Callable, *args) -> tuple[Callable, float]:
    """``(compiled, seconds)``: a ``jax.jit`` function compiled ahead of time for ``args``, timed on
    its own: the one place JAX compile time is measured (framework-free, so a process measuring one
    framework alone can use it)."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def warmup_excess_s(warmup_s: list[float], timing: Timing) -> float:
    """The warm-up steps' time beyond as many timed steps: ``torch.compile``'s compile time, which
    happens inside its first calls."""
    return max(0.0, sum(warmup_s) - len(warmup_s) * timing.median_s)


def failure_reason(what: str, error: BaseException) -> str:
    """A skipped row's reason for a contender that raised: ``"<what> failed: Type: first line"``."""
    first_line = next(iter(str(error).strip().splitlines()), "")
    return f"{what} failed: {type(error).__name__}: {first_line}"


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
