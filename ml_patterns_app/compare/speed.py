"""The speed side of ``ml-patterns compare``'s report: each run's steady state, rates and peak memory,
and whether the machine was quiet enough for its timing to be trusted."""

from __future__ import annotations

import statistics

from ml_patterns_app.compare.settings import WorkerResult

# Timing is not reliable when, during a worker, other processes used more than this share of all
# CPUs, or when the 1-minute load average before it exceeded this many per CPU (bench's rule).
BUSY_CPU_SHARE = 0.15
BUSY_LOAD_PER_CPU = 0.5


def steady_state(epoch_times: list[dict], epoch_compilations: list) -> dict:
    """The steady state from each epoch's training time (``train_s``, ended by the epoch's one host
    sync: steps are never waited for one by one, so a GPU is timed at its throughput, not at the
    host's latency per step).

    An epoch is at steady state when it is not the first (torch's allocator and kernels warm up;
    JAX compiles) and compiled nothing new (``epoch_compilations``: programs compiled by each
    epoch's end, None where the backend compiles nothing). Every epoch holds the same batches in
    another order, so their times compare. Returns ``{"epochs": the steady epochs, "epoch_s":
    their times, "measured": bool}``; ``measured`` is False when no epoch qualifies (one epoch, or
    each compiled something).
    """
    compiled = list(epoch_compilations) + [None] * (len(epoch_times) - len(epoch_compilations))
    steady = [e for e in range(1, len(epoch_times)) if compiled[e] is None or compiled[e] == compiled[e - 1]]
    return {"epochs": steady, "epoch_s": [epoch_times[e]["train_s"] for e in steady], "measured": bool(steady)}


def run_speed(result: WorkerResult, flops_per_step: float | None = None, flops_counter: str = "") -> dict:
    """One run's speed in the report: steady state, warm-up, rates and peak memory.
    ``flops_per_step``: one training step's FLOPs (the reference's count, the same model on every
    side; ``flops_counter``: what counted them), for the FLOP rate at steady state."""
    steady = steady_state(result.epoch_times, result.epoch_compilations)
    first_epoch = result.epoch_times[0]["train_s"]
    steps, samples = result.steps_per_epoch, result.samples_per_epoch
    speed = {
        "first_epoch_s": first_epoch,
        "steady_epochs": steady["epochs"],
        "train_steps": steps * len(result.epoch_times),
        "epochs": len(result.epoch_times),
        "compilations": result.compilations,
        "compile_cache": result.compile_cache or None,
        "padding_utilization": result.padding,
        "machine_load": {**result.machine_load, "load_average_during": result.load_during},
        "peak_memory_bytes": result.peak_memory_bytes,
        "peak_memory_kind": result.peak_memory_kind,
        "flops_per_step": flops_per_step,
        "flops_counter": flops_counter or None,
    }
    if not steady["measured"]:
        return {
            **speed,
            "steady_epoch_s": None,
            "warmup_s": None,
            "steps_per_s": None,
            "samples_per_s": None,
            "gflop_per_s": None,
        }
    epoch = statistics.median(steady["epoch_s"])
    return {
        **speed,
        "steady_epoch_s": epoch,
        # The first epoch's time beyond a steady one: jax.jit's compilations (one per batch shape),
        # torch's warm-up. Negative when the machine got busier later: kept as is.
        "warmup_s": first_epoch - epoch,
        "steps_per_s": steps / epoch,
        "samples_per_s": samples / epoch,
        # No MFU: that needs the device's peak, which bench measures (ml-patterns bench), not compare.
        "gflop_per_s": None if flops_per_step is None else flops_per_step * steps / epoch / 1e9,
    }


def timing_reliability(results: dict[str, WorkerResult]) -> dict:
    """Per backend, whether other processes competed for the CPUs while its worker ran."""
    verdicts = {}
    for backend, result in results.items():
        load = result.machine_load
        cpus = result.cpus.get("cpus_available") or 1
        share = load.get("others_cpu_share")
        before = (load.get("load_average_before") or [0.0])[0]
        # The CPU time other processes took during the worker is the direct measure. The load average
        # before it is only the fallback where that share cannot be read: it decays over minutes, so
        # right after a previous run (a second compare, the other backend's worker) it stays high
        # while nothing competes.
        busy = share > BUSY_CPU_SHARE if share is not None else before > BUSY_LOAD_PER_CPU * cpus
        verdicts[backend] = {"busy": busy, "others_cpu_share": share, "load_average_before": before}
    return verdicts
