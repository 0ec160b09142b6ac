"""Moving floating-point values by whole units in the last place (numpy only): the verdict's
ensemble starts from the initial weights moved this way (``ml_patterns.verdict``).

Every precision's ensemble starts one float32 ulp off (``INITIAL_ULPS``), bf16-mixed's included:
its float32 master weights move by one float32 ulp, and the bfloat16 casts that flip (a weight near
a bfloat16 rounding boundary; then every activation near one) are its compute perturbation, of the
size of two correct backends' (docs/PRECISION.md). ``BF16_ULPS``, one bfloat16 ulp (bfloat16 keeps 8
of float32's 24 significant bits, so for normal numbers one bfloat16 spacing is 2^16 float32
spacings), is the start the calibration measured and rejected for bf16-mixed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

BF16_ULPS = 2 ** (np.finfo(np.float32).nmant - 7)  # 2^16: bfloat16 has 7 explicit mantissa bits, float32 23
# The float32 ulps an ensemble rerun's initial weights move by, per training precision
# (``ml_patterns.precision``); tf32 keeps float32 weights and, on a CPU, float32 compute. bf16-mixed:
# one float32 ulp, not one bfloat16 ulp. Calibration (ml_patterns_bench.calibrate_verdict, docs/PARITY.md):
# started one bfloat16 ulp off, the reruns lay 6e-5 to 1e-2 from torch at the first step where correct
# runs lay 0 to 4.6e-4, every run was chaotic from step 0 and the verdict caught 3 of 21 injected bugs;
# one float32 ulp off (5e-7 to 3e-4), it caught every bug above bfloat16's resolution, no false alarm.
INITIAL_ULPS = {"float32": 1, "tf32": 1, "bf16-mixed": 1}

_INTS = {np.dtype(np.float32): (np.int32, np.uint32), np.dtype(np.float64): (np.int64, np.uint64)}


def ulps_off(values: np.ndarray, rng: np.random.Generator, ulps: int = 1) -> np.ndarray:
    """``values`` (float32 or float64) with every entry moved by ``ulps`` units in the last place of
    its dtype, up or down at random (same dtype and shape). Counted along the dtype's ordered bit
    patterns, so a move crosses zero and powers of two as ``ulps`` successive ``np.nextafter`` calls
    would (a finite value stays finite); ``ulps=1`` is ``verdict.one_ulp``'s move, draw for draw."""
    values = np.asarray(values)
    if values.dtype not in _INTS:
        raise TypeError(f"ulps_off moves float32 or float64 values, got {values.dtype}")
    if ulps < 1:
        raise ValueError(f"ulps must be at least 1, got {ulps}")
    signed, unsigned = _INTS[values.dtype]
    sign_bit = np.array(1, unsigned) << np.array(8 * values.itemsize - 1, unsigned)
    bits = values.view(unsigned)
    magnitude = (bits & ~sign_bit).astype(signed)
    # -0.0 and +0.0 both map to 0: the order of the floats as integers
    ordered = np.where(bits & sign_bit, -magnitude, magnitude)
    down = rng.random(values.shape) < 0.5  # the draw ``np.nextafter``'s direction takes in ``verdict.one_ulp``
    largest = np.asarray(np.finfo(values.dtype).max, values.dtype).view(signed)
    # a finite value stays finite (moved at most to the largest float)
    moved = np.clip(ordered + np.where(down, -ulps, ulps).astype(signed), -largest, largest)
    back = np.where(moved < 0, (-moved).astype(unsigned) | sign_bit, moved.astype(unsigned))
    return back.astype(unsigned).view(values.dtype)


def arrays_off(arrays: Mapping[str, np.ndarray], seed: int, ulps: int = 1) -> dict[str, np.ndarray]:
    """``arrays`` (a checkpoint's ``{name: array}``) with every floating-point entry moved by
    ``ulps`` ulps (``ulps_off``), the signs drawn from ``seed`` in the names' sorted order; other
    entries as they are: the initial weights of the verdict's ensemble rerun of that seed."""
    rng = np.random.default_rng(seed)
    return {
        name: ulps_off(array, rng, ulps) if np.issubdtype(array.dtype, np.floating) else array
        for name, array in sorted(arrays.items())
    }
