"""Measuring one train step of torch's for a benchmark (``measure_step``): eager, or
``torch.compile`` from cold caches, by the core's timing rules (``ml_patterns.timing``).

``jax_impl.measure`` is its twin under the same name and signature, so that the benchmarks'
harness calls ``measure_step`` the same way for every contender (``ml_patterns_bench.harness.MEASURES``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch._inductor.utils

from ml_patterns.timing import Measured, failure_reason, measure_steps, warmup_excess_s
from torch_impl.runtime import peak_memory, release_memory, reset_peak_memory, wait

NO_PEAK = {"bytes": None, "how": "n/a: torch keeps no CPU allocator statistics", "measure": "none"}


def measure_step(
    make_step: Callable[[torch.device], Callable[[], torch.Tensor]],
    dev: torch.device,
    quick: bool,
    compile_backend: str | None = None,
) -> Measured:
    """The measurement of the step ``make_step(dev)`` builds (``call() -> loss``, a 0-d tensor).

    ``compile_backend`` None: eager, no compile time. Otherwise ``torch.compile(call,
    backend=compile_backend)`` from cold caches (``cold_torch_compile``), its compile time the
    warm-up steps' excess over as many timed steps (``ml_patterns.timing.warmup_excess_s``), and the
    graph breaks of a fresh copy of the step in ``extra`` (``graph_breaks``). Memory: the CUDA
    allocator's peak; on a CPU none (``"measure": "none"``). A compiler that fails raises.
    """
    # Before the measured step exists and the peak is reset: explaining runs a step of its own copy.
    extra = {} if compile_backend is None else graph_breaks(make_step, dev)
    release_memory()
    reset_peak_memory(dev)
    call = make_step(dev)

    def sync() -> None:
        wait(dev)

    if compile_backend is None:
        losses, _, timing = measure_steps(call, sync, quick)
        compile_s = None
    else:
        # One graph where the step allows it: a graph break found later would then fail, not slow, the row.
        compiled = torch.compile(call, backend=compile_backend, fullgraph=extra.get("graph_breaks") == 0)
        with cold_torch_compile():
            losses, warmup_s, timing = measure_steps(compiled, sync, quick)
        compile_s = warmup_excess_s(warmup_s, timing)
    return Measured(timing, compile_s, peak_memory(dev) or NO_PEAK, losses, extra)


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


@contextlib.contextmanager
def cold_torch_compile() -> Iterator[None]:
    """``torch.compile`` calls in the block compile from scratch, as JAX's ``jit`` does in a benchmark.

    Dynamo's in-memory caches are reset, and inductor gets an empty on-disk cache (FX graphs,
    generated C++/Triton kernels), deleted afterwards; otherwise a second run of the benchmark
    would time cache hits.
    """
    torch._dynamo.reset()
    # torch >= 2.8 calls it fresh_cache; earlier releases fresh_inductor_cache.
    fresh = getattr(torch._inductor.utils, "fresh_cache", None) or torch._inductor.utils.fresh_inductor_cache
    with fresh():
        yield
