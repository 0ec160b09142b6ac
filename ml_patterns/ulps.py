"""Moving floating-point values by whole units in the last place (numpy only): the verdict's
ensemble starts from the initial weights moved this way (``ml_patterns.verdict``).

A bf16-mixed run keeps float32 master weights but computes with their bfloat16 roundings, so the
rounding noise it must be judged against is bfloat16's: its ensemble starts from weights moved by
one bfloat16 ulp, ``BF16_ULPS`` float32 ulps (bfloat16 keeps 8 of float32's 24 significant bits, so
for normal numbers one bfloat16 spacing is 2^16 float32 spacings).
"""

from __future__ import annotations

import numpy as np

BF16_ULPS = 2 ** (np.finfo(np.float32).nmant - 7)  # 2^16: bfloat16 has 7 explicit mantissa bits, float32 23
# The float32 ulps an ensemble rerun's initial weights move by, per training precision
# (``ml_patterns.precision``); tf32 keeps float32 weights and, on a CPU, float32 compute.
INITIAL_ULPS = {"float32": 1, "tf32": 1, "bf16-mixed": BF16_ULPS}

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
