"""The float32 noise floor of a training run, and the verdict against it (numpy only, so that
``ml-patterns compare``'s processes use it without importing the other backend; the figure is
``ml_patterns_app.porting.floor.drift_figure``).

Float32 training is chaotic: two runs that differ only in rounding drift apart, slowly and then
faster. A fixed tolerance over hundreds of steps cannot tell that from a porting bug, so the floor
is measured: the reference side trains a second time from the same weights and batches with every
weight moved by one ulp (``one_ulp``: ``np.nextafter`` towards +inf or -inf at random per entry), a
change of nothing but rounding. Per step ``t``:

- drift[t] = |loss_other - loss_reference| / |loss_reference|, the cross-backend difference;
- floor[t] = max(running max over s <= t of |loss_one_ulp_off - loss_reference| / |loss_reference|,
  LOSS.rtol + LOSS.atol / |loss_reference|).

The running max is the envelope of the divergence so far: the instantaneous difference of two
chaotic runs keeps crossing zero, while how far they have come apart only grows. The second term
is the policy's single-call loss tolerance: two backends may differ by that much on any one
evaluation, so no step is held tighter. The runs agree while drift[t] <= FLOOR_MULTIPLE * floor[t] at
every step. From its first update on, the perturbed run rounds differently at every operation, as
the other backend does; FLOOR_MULTIPLE allows for two algorithms (other reduction orders, fused
kernels) rounding somewhat more differently than one algorithm on inputs one ulp apart. A bug moves
the losses apart by its own size, orders of magnitude above the floor.

What the floor does not absorb: a *systematic* difference, however small, that the training
dynamics amplify. Measured on examples/check_your_port.py's CNN at lr 3e-2 (an unstable phase from
step ~150): torch float32 and float64 agree to 1e-7 over 300 steps, and so does torch rerun one ulp
off, but JAX drifts to 2e-2. The cause is optax's Adam: it computes the bias correction
``1 - 0.999**t`` in float32, off by up to 2e-5 relative, where torch computes it in float64. With the
correction computed as ``-expm1(t * log(0.999))`` (accurate in float32), or with ``jax_enable_x64``,
JAX agrees with torch to 1e-7 over the same 300 steps. The verdict reports such a drift as
divergence: the two sides do not compute the same updates.
"""

from __future__ import annotations

import numpy as np

from ml_patterns.parity import LOSS, Tolerance

# How far above the measured floor the cross-backend drift may go. Measured (300 Adam steps unless
# noted; worst drift/floor over all steps): correct ports 1.2 (catalogue Transformer, lr 1e-3), 0.65
# (lr 3e-3), 0.57 (lr 1e-2), 0.15 (the example's CNN, lr 1e-3, 200 steps), 1.35 (CNN, lr 1e-2);
# Adam with epsilon inside the square root 17.7, from step 3. ``ml-patterns compare``'s defaults (the
# multi-task molecule model, lr 1e-3, 189 steps): 1.58 (40 at step 72 with optax's own float32 Adam
# bias correction; see docs/PARITY.md).
FLOOR_MULTIPLE = 5.0


def drift_and_floor(
    reference_losses, other_losses, one_ulp_losses, minimum: Tolerance = LOSS
) -> tuple[np.ndarray, np.ndarray]:
    """(drift, floor) per step, as defined in the module docstring (float64 arrays); ``minimum`` is the
    single-call loss tolerance (the policy's for the device: ``parity.tolerance("loss", kind)``)."""
    reference = np.asarray(reference_losses, np.float64)
    scale = np.abs(reference)
    drift = np.abs(np.asarray(other_losses, np.float64) - reference) / scale
    noise = np.maximum.accumulate(np.abs(np.asarray(one_ulp_losses, np.float64) - reference) / scale)
    return drift, np.maximum(noise, minimum.rtol + minimum.atol / scale)


def first_outside(drift: np.ndarray, floor: np.ndarray, multiple: float = FLOOR_MULTIPLE) -> int | None:
    """The first step whose drift exceeds ``multiple`` floors (a NaN drift does), else None."""
    bad = np.flatnonzero(~(drift <= multiple * floor))
    return int(bad[0]) if bad.size else None


def one_ulp(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``values`` with every entry moved by one ulp, up or down at random (same dtype)."""
    direction = np.where(rng.random(values.shape) < 0.5, -np.inf, np.inf).astype(values.dtype)
    return np.nextafter(values, direction)
