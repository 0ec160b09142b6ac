"""Both frameworks set up alike for a run, and the one place a step is measured for a contender.

Setup: threads, the matmul precision policy (through ``torch_impl.runtime`` / ``jax_impl.runtime``),
cold compile caches, and what the loaded frameworks report. Imported by the runner only after
``ml_patterns.machine.restrict_cpus`` has pinned the CPUs, since XLA sizes its CPU thread pool when
its backend starts.

Measuring: a workload writes its step once per framework (``Step``); ``contender_rows`` runs it for
every contender of the run (``ml_patterns_bench.common.CONTENDERS``) on a device, with the same warm-up, timing,
compile-time and memory rules for all:

- torch: ``step.torch(device)`` returns ``call() -> loss``; eager, or ``torch.compile(call)`` from
  cold caches, its compile time the warm-up calls' excess over as many timed calls;
- JAX: ``step.jax(device)`` returns ``(fn, state, args)`` with ``fn(state, *args) -> (state, loss)``
  (or ``(state, {"loss": loss})``, as the Trainer's step returns), the state donated. A ``jax.jit``
  function is compiled ahead of time, ``fn.lower(...).compile()`` timed apart
  (``ml_patterns_bench.common.compile_jax``), its memory XLA's static estimate; a step object of
  several programs (the Trainer's ``TrainStep``, timed as the Trainer runs it, not fused into one
  program) compiles in its first calls (the warm-up's excess), its memory the allocator's peak.

Memory: every ``peak_memory`` says what it measured (``"measure"``): ``"allocator peak"`` (torch's
CUDA allocator, or XLA's on a GPU: the most held during the measurement), ``"static estimate"``
(XLA's analysis of one compiled program, before it runs) or ``"none"``. The two are different
quantities: the table labels each, and nothing divides one by the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping

from jax_impl.environment import memory_environment

# JAX reserves 75% of GPU memory when its backend starts, which would starve torch running in the
# same process; allocate on demand instead (read when the backend starts, so set before any use).
# Set, not defaulted: an inherited XLA_PYTHON_CLIENT_PREALLOCATE=true must not decide it (our own
# option, ML_PATTERNS_JAX_PREALLOCATE=1, does).
os.environ.update(memory_environment())

import jax  # noqa: E402
import torch  # noqa: E402
import torch._inductor.utils  # noqa: E402

import jax_impl.runtime  # noqa: E402
import torch_impl.runtime  # noqa: E402
from ml_patterns.errors import UsageError  # noqa: E402

from .common import (  # noqa: E402
    BENCH_PRECISIONS,
    BF16,
    CONTENDERS,
    BenchContext,
    Contender,
    Timing,
    compile_jax,
    failure_reason,
    measure_steps,
    result_row,
    skipped_row,
    warmup_excess_s,
)

RUNTIMES = {"torch": torch_impl.runtime, "jax": jax_impl.runtime}
DEVICES = ("cpu", "gpu")


@dataclasses.dataclass(frozen=True)
class Step:
    """One workload's step, written once per framework (module docstring): both sides start from
    the same numpy weights and inputs, and return the loss, so their warm-up losses must agree.
    Each takes ``(device, precision="float32")``, ``precision`` a training precision of
    ``ml_patterns.precision`` (``"float32"`` or ``"bf16-mixed"``, as ``BenchContext.step_precisions`` asks)."""

    torch: Callable[[torch.device, str], Callable[[], torch.Tensor]]
    jax: Callable[[jax.Device, str], tuple[Callable, object, tuple]]


@dataclasses.dataclass(frozen=True)
class Measured:
    timing: Timing
    compile_s: float | None
    peak_memory: dict
    warmup_losses: list[float]
    extra: dict = dataclasses.field(default_factory=dict)  # more fields of the row (torch.compile's graph breaks)


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
    if contender.framework == "jax":
        return _measure_jax(step, dev, quick)
    try:
        return _measure_torch(step, dev, quick, contender.compile_backend)
    except Exception as error:  # a compiler that fails (no C++ toolchain, an unsupported Python) skips
        if contender.compile_backend is None:
            raise
        return failure_reason(contender.name, error)


def _measure_torch(step: Step, dev: torch.device, quick: bool, compile_backend: str | None) -> Measured:
    runtime = torch_impl.runtime
    # Before the measured step exists and the peak is reset: explaining runs a step of its own copy.
    extra = {} if compile_backend is None else graph_breaks(step.torch, dev)
    runtime.release_memory()
    runtime.reset_peak_memory(dev)
    call = step.torch(dev)

    def sync() -> None:
        runtime.wait(dev)

    if compile_backend is None:
        losses, _, timing = measure_steps(call, sync, quick)
        compile_s = None
    else:
        # One graph where the step allows it: a graph break found later would then fail, not slow, the row.
        compiled = torch.compile(call, backend=compile_backend, fullgraph=extra.get("graph_breaks") == 0)
        with cold_torch_compile():
            losses, warmup_s, timing = measure_steps(compiled, sync, quick)
        compile_s = warmup_excess_s(warmup_s, timing)
    memory = runtime.peak_memory(dev) or {
        "bytes": None,
        "how": "n/a: torch keeps no CPU allocator statistics",
        "measure": "none",
    }
    return Measured(timing, compile_s, memory, losses, extra)


def graph_breaks(make_call: Callable[[torch.device], Callable[[], object]], dev: torch.device) -> dict:
    """What ``torch._dynamo.explain`` finds in one call of a fresh copy of the measured step
    (explaining runs it): ``{"graph_breaks", "graphs", "break_reasons"}`` (the first few), or
    ``{"graph_breaks": None, "graph_break_check": why}`` where explaining itself failed."""
    torch._dynamo.reset()
    try:
        explanation = torch._dynamo.explain(make_call(dev))()
    except Exception as error:  # the row is still measured, compiled without fullgraph
        return {"graph_breaks": None, "graph_break_check": failure_reason("torch._dynamo.explain", error)}
    finally:
        torch._dynamo.reset()
    reasons = [str(getattr(b, "reason", b)).splitlines()[0] for b in explanation.break_reasons]
    return {
        "graph_breaks": explanation.graph_break_count,
        "graphs": explanation.graph_count,
        "break_reasons": reasons[:5],
    }


def _measure_jax(step: Step, dev: jax.Device, quick: bool) -> Measured:
    jax.clear_caches()  # compile from scratch, like every other contender
    fn, state, args = step.jax(dev)
    state, args = jax.device_put((state, args), dev)
    runtime = jax_impl.runtime
    runtime.reset_peak_memory(dev)
    if hasattr(fn, "lower"):  # one jax.jit program: compiled ahead of time, its compile timed apart
        fn, compile_s = compile_jax(fn, state, *args)
        memory = compiled_memory(fn)
    else:  # a step object of several programs (the Trainer's): they compile inside the first calls
        compile_s = memory = None
    holder = [state]
    del state  # donated on the first call

    def call() -> jax.Array:
        holder[0], out = fn(holder[0], *args)
        return out["loss"] if isinstance(out, Mapping) else out

    losses, warmup_s, timing = measure_steps(call, lambda: jax.block_until_ready(holder[0]), quick)
    if memory is None:
        compile_s = warmup_excess_s(warmup_s, timing)
        memory = runtime.peak_memory(dev) or {
            "bytes": None,
            "how": "n/a: XLA keeps no CPU allocator statistics",
            "measure": "none",
        }
    return Measured(timing, compile_s, memory, losses)


def compiled_memory(compiled) -> dict:
    """``{"bytes", "how"}``: what a compiled JAX step with donated arguments holds while it runs."""
    analysis = compiled.memory_analysis()
    return {
        "bytes": analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes
        + analysis.temp_size_in_bytes,
        "how": "XLA memory analysis of the compiled step: arguments + outputs - donated + temporaries",
        "measure": "static estimate",
    }


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
    (see ``cold_torch_compile`` for torch's). Yields ``describe()``, read back after setting.
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


@contextlib.contextmanager
def cold_torch_compile() -> Iterator[None]:
    """``torch.compile`` calls in the block compile from scratch, as JAX's ``jit`` does here.

    Dynamo's in-memory caches are reset, and inductor gets an empty on-disk cache (FX graphs,
    generated C++/Triton kernels), deleted afterwards; otherwise a second run of the benchmark
    would time cache hits.
    """
    torch._dynamo.reset()
    # torch >= 2.8 calls it fresh_cache; earlier releases fresh_inductor_cache.
    fresh = getattr(torch._inductor.utils, "fresh_cache", None) or torch._inductor.utils.fresh_inductor_cache
    with fresh():
        yield
