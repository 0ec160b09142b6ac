"""Timing a step by the rules, framework-free: both backends' ``measure.measure_step`` and the
benchmarks (``ml_patterns_bench``) time through here, so a number means the same on every side.

The rules (as nanoGPT's bench.py): warm-up calls first (compilation and caches happen there and are
timed apart), a synchronization inside the timed region (``block_until_ready`` /
``torch.cuda.synchronize``), the median of the repeats as the headline, and the spread beside it.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable


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


@dataclasses.dataclass(frozen=True)
class Measured:
    """One contender's measurement of a train step (``measure.measure_step`` on either backend):
    its ``timing``, its compile time apart (``None`` where nothing compiles), its peak memory
    (``{"bytes", "how", "measure"}``), the warm-up steps' losses (the check that the contenders ran
    the same arithmetic) and more fields of the benchmark's row (torch.compile's graph breaks)."""

    timing: Timing
    compile_s: float | None
    peak_memory: dict
    warmup_losses: list[float]
    extra: dict = dataclasses.field(default_factory=dict)


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


def warmup_excess_s(warmup_s: list[float], timing: Timing) -> float:
    """The warm-up steps' time beyond as many timed steps: the compile time of a step that compiles
    inside its first calls (``torch.compile``, a JAX step object of several programs)."""
    return max(0.0, sum(warmup_s) - len(warmup_s) * timing.median_s)


def failure_reason(what: str, error: BaseException) -> str:
    """A skipped row's reason for a contender that raised: ``"<what> failed: Type: first line"``."""
    first_line = next(iter(str(error).strip().splitlines()), "")
    return f"{what} failed: {type(error).__name__}: {first_line}"
