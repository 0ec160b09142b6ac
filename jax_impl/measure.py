"""Measuring one train step of JAX's for a benchmark; the contract: ``torch_impl.measure``.

Divergences, and why:

- A ``jax.jit`` step is compiled ahead of time (``runtime.compile_ahead``: ``lower(...).compile()``), its
  compile timed apart, and its memory is XLA's static estimate of the compiled program
  (``compiled_memory``): XLA keeps no allocator statistics on a CPU, and the estimate is the same
  quantity on every device.
- A step object of several programs (the Trainer's ``TrainStep``, timed as the Trainer runs it, not
  fused into one program) compiles inside its first calls: its compile time is the warm-up's
  excess, its memory the allocator's peak (a GPU's).
- There is no ``compile_backend``: every JAX step is ``jax.jit``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax

from jax_impl.runtime import compile_ahead, peak_memory, reset_peak_memory
from ml_patterns.timing import Measured, measure_steps, warmup_excess_s

NO_PEAK = {"bytes": None, "how": "n/a: XLA keeps no CPU allocator statistics", "measure": "none"}


def measure_step(
    make_step: Callable[[jax.Device], tuple[Callable, object, tuple]],
    dev: jax.Device,
    quick: bool,
    compile_backend: str | None = None,
) -> Measured:
    """The measurement of the step ``make_step(dev)`` builds: ``(fn, state, args)`` with
    ``fn(state, *args) -> (state, loss)`` (or ``(state, {"loss": loss})``, as the Trainer's step
    returns), the state donated; the loss a 0-d array."""
    if compile_backend is not None:
        raise ValueError(f"JAX compiles every step with jax.jit; compile_backend={compile_backend!r} has no meaning")
    jax.clear_caches()  # compile from scratch, like every other contender
    fn, state, args = make_step(dev)
    state, args = jax.device_put((state, args), dev)
    reset_peak_memory(dev)
    if hasattr(fn, "lower"):  # one jax.jit program: compiled ahead of time, its compile timed apart
        fn, compile_s = compile_ahead(fn, state, *args)
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
        memory = peak_memory(dev) or NO_PEAK
    return Measured(timing, compile_s, memory, losses)


def compiled_memory(compiled) -> dict:
    """``{"bytes", "how", "measure"}``: what a compiled JAX step with donated arguments holds while it runs."""
    analysis = compiled.memory_analysis()
    return {
        "bytes": analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes
        + analysis.temp_size_in_bytes,
        "how": "XLA memory analysis of the compiled step: arguments + outputs - donated + temporaries",
        "measure": "static estimate",
    }
