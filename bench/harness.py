"""Both frameworks set up alike for a run, and the one place a step is measured for a contender.

Setup: threads, the matmul precision policy (through ``torch_impl.runtime`` / ``jax_impl.runtime``),
cold compile caches, and what the loaded frameworks report. Imported by the runner only after
``ml_patterns.machine.restrict_cpus`` has pinned the CPUs, since XLA sizes its CPU thread pool when
its backend starts.

Measuring: a workload writes its step once per framework (``Step``); ``contender_rows`` runs it for
every contender of the run (``ml_patterns_bench.common.CONTENDERS``) on a device, through the
contender's framework's ``measure.measure_step`` (``MEASURES``: ``torch_impl.measure``,
``jax_impl.measure``), the same call for all, with the core's timing rules (``ml_patterns.timing``):

- torch: ``step.torch(device)`` returns ``call() -> loss``; eager, or ``torch.compile(call)`` from
  cold caches, its compile time the warm-up calls' excess over as many timed calls, its graph
  breaks in the row;
- JAX: ``step.jax(device)`` returns ``(fn, state, args)`` with ``fn(state, *args) -> (state, loss)``
  (or ``(state, {"loss": loss})``, as the Trainer's step returns), the state donated. A ``jax.jit``
  function is compiled ahead of time, ``fn.lower(...).compile()`` timed apart, its memory XLA's
  static estimate; a step object of several programs (the Trainer's ``TrainStep``) compiles in its
  first calls (the warm-up's excess), its memory the allocator's peak.

Memory: every ``peak_memory`` says what it measured (``"measure"``): ``"allocator peak"`` (torch's
CUDA allocator, or XLA's on a GPU: the most held during the measurement), ``"static estimate"``
(XLA's analysis of one compiled program, before it runs) or ``"none"``. The two are different
quantities: the table labels each, and nothing divides one by the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator

from jax_impl.environment import memory_environment

# JAX reserves 75% of GPU memory when its backend starts, which would starve torch running in the
# same process; allocate on demand instead (read when the backend starts, so set before any use).
# Set, not defaulted: an inherited XLA_PYTHON_CLIENT_PREALLOCATE=true must not decide it (our own
# option, ML_PATTERNS_JAX_PREALLOCATE=1, does).
os.environ.update(memory_environment())

import jax  # noqa: E402
import torch  # noqa: E402

import jax_impl.measure  # noqa: E402
import jax_impl.runtime  # noqa: E402
import torch_impl.measure  # noqa: E402
import torch_impl.runtime  # noqa: E402
from ml_patterns.errors import UsageError  # noqa: E402
from ml_patterns.timing import Measured  # noqa: E402

from .common import (  # noqa: E402
    BENCH_PRECISIONS,
    BF16,
    CONTENDERS,
    BenchContext,
    Contender,
    failure_reason,
    result_row,
    skipped_row,
)

RUNTIMES = {"torch": torch_impl.runtime, "jax": jax_impl.runtime}
MEASURES = {"torch": torch_impl.measure, "jax": jax_impl.measure}
DEVICES = ("cpu", "gpu")


@dataclasses.dataclass(frozen=True)
class Step:
    """One workload's step, written once per framework (module docstring): both sides start from
    the same numpy weights and inputs, and return the loss, so their warm-up losses must agree.
    Each takes ``(device, precision="float32")``, ``precision`` a training precision of
    ``ml_patterns.precision`` (``"float32"`` or ``"bf16-mixed"``, as ``BenchContext.step_precisions`` asks)."""

    torch: Callable[[torch.device, str], Callable[[], torch.Tensor]]
    jax: Callable[[jax.Device, str], tuple[Callable, object, tuple]]


def contender_rows(benchmark: str, workload: str, step: Step, ctx: BenchContext, device: str, **row) -> list[dict]:
    """A ``result_row`` (``row``: its keywords, e.g. ``items``, ``unit``, ``flops``, ``detail``) or a
    ``skipped_row`` per contender of ``ctx`` and training precision of ``ctx.step_precisions``;
    ``warmup_losses`` and ``precision`` are added to each, and a bf16-mixed row's workload says so."""
    rows = []
    for precision in ctx.step_precisions:
        bound = Step(torch=lambda d, p=precision: step.torch(d, p), jax=lambda d, p=precision: step.jax(d, p))
        named = workload if precision == "float32" else f"{workload}, {precision}"
        for name in ctx.contenders:
            contender = CONTENDERS[name]
            measured = measure(bound, contender, device, ctx.quick)
            if isinstance(measured, str):
                rows.append({**skipped_row(benchmark, named, name, device, measured), "precision": precision})
            else:
                rows.append(
                    result_row(
                        benchmark,
                        named,
                        name,
                        device,
                        measured.timing,
                        compile_s=measured.compile_s,
                        peak_memory=measured.peak_memory,
                        warmup_losses=measured.warmup_losses,
                        precision=precision,
                        **measured.extra,
                        **row,
                    )
                )
            RUNTIMES[contender.framework].release_memory()
    return rows


def measure(step: Step, contender: Contender, device: str, quick: bool) -> Measured | str:
    """The contender's measurement of ``step`` on ``device``, or the reason it could not run there."""
    dev = RUNTIMES[contender.framework].device(device)
    if dev is None:
        return f"{contender.framework} has no {device} device here"
    make_step = getattr(step, contender.framework)
    try:
        return MEASURES[contender.framework].measure_step(make_step, dev, quick, contender.compile_backend)
    except Exception as error:  # a compiler that fails (no C++ toolchain, an unsupported Python) skips
        if contender.compile_backend is None:
            raise
        return failure_reason(contender.name, error)


def resolve_devices(choice: str) -> tuple[str, ...]:
    """``--device cpu|gpu|all`` -> the devices to run on; ``all`` means every device present."""
    gpu = any(runtime.device("gpu") is not None for runtime in RUNTIMES.values())
    if choice == "gpu" and not gpu:
        raise UsageError(
            "--device gpu: no CUDA GPU found (torch.cuda.is_available() is False and jax has no gpu backend; "
            "install the CUDA builds of torch and jax on a GPU machine)"
        )
    if choice == "all":
        return ("cpu", "gpu") if gpu else ("cpu",)
    if choice not in DEVICES:
        raise UsageError(f"--device must be one of cpu, gpu, all; got {choice!r}")
    return (choice,)


@contextlib.contextmanager
def configured(threads: int, precision: str) -> Iterator[dict]:
    """Sets both frameworks' threads and matmul precision for the block (``"bf16"``: the float32
    policy, under which the float32 rows run), restoring them afterwards.

    JAX's persistent compilation cache is off inside, so compile times are cold on both sides
    (``torch_impl.measure.cold_torch_compile`` does it for torch's). Yields ``describe()``, read back after setting.
    """
    if precision not in BENCH_PRECISIONS:
        raise UsageError(f"--precision must be one of {sorted(BENCH_PRECISIONS)}, got {precision!r}")
    policy = "float32" if precision == BF16 else precision
    saved_threads, saved_cache = torch.get_num_threads(), jax.config.jax_enable_compilation_cache
    torch.set_num_threads(threads)
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        with torch_impl.runtime.precision_policy(policy), jax_impl.runtime.precision_policy(policy):
            yield describe(precision)
    finally:
        torch.set_num_threads(saved_threads)
        jax.config.update("jax_enable_compilation_cache", saved_cache)


def describe(precision: str) -> dict:
    """What the loaded frameworks report: versions, threads, devices and the precision in force."""
    gpu = torch_impl.runtime.device("gpu")
    jax_devices = {kind: device.device_kind for kind in DEVICES if (device := jax_impl.runtime.device(kind))}
    return {
        "torch": {
            "version": torch.__version__,
            "intra_op_threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(gpu) if gpu is not None else None,
        },
        "jax": {
            "version": jax.__version__,
            "default_backend": jax.default_backend(),
            "devices": jax_devices,
            "compilation_cache": jax.config.jax_enable_compilation_cache,
            "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
        },
        "precision": {
            "policy": precision,
            "summary": BENCH_PRECISIONS[precision],
            **torch_impl.runtime.precision(),
            **jax_impl.runtime.precision(),
        },
    }
