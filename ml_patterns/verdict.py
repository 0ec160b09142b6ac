"""Do two float32 training runs agree? A verdict that holds on machines not seen (numpy only).

Float32 training is chaotic: two runs that differ only in rounding drift apart, slowly and then
faster, by amounts that depend on the machine (vector width, threads, kernels). A fixed tolerance
over hundreds of steps cannot tell that from a porting bug; so the noise is measured, on the run
itself. Inputs are per-step (or per-epoch) losses, float arrays ``[T]`` (and, optionally, each run's
global weight norm at a few points, ``[E]``):

- ``reference``: the reference side (torch);
- ``other``: the side under test (JAX);
- ``ensemble`` ``[K, T]``: the reference rerun K times with independent random signs, its weights
  moved by one ulp up or down before the first step and again after every step: runs that differ
  from the reference by nothing but rounding, at every step, as another backend's do (a rerun
  perturbed once, at the start, rounds like the reference from then on and underestimates the
  noise several times over: docs/PARITY.md);
- ``anchor`` (optional): the reference computed in float64 from the same weights and batches.

Four tests (``judge``); before the horizon the run agrees when test 2 or test 1 holds at every
step (the report names the one that decided), after it when test 3 does; and, where the weight
norms are given, only when test 4 holds too:

1. **Ensemble floor.** drift[t] = |other - reference| / |reference|; floor[t] = the running max over
   s <= t of the ensemble's largest relative distance from the reference, at least the single-call
   loss tolerance. The running max is the envelope of the divergence so far (two chaotic runs keep
   crossing; how far apart they have come only grows), and the max over K runs is a measured bound,
   not one noisy sample. Passes when drift <= ``FLOOR_MULTIPLE`` x floor at every step.
2. **Float64 anchor.** Each float32 run's error is its running max relative distance from the
   float64 run; the reference's is the largest over the reference and its ensemble. The other side
   is as accurate as the reference when its error stays within ``ACCURACY_FACTOR`` x the
   reference's at every step: it rounds differently, not worse, and the verdict never blames the
   more accurate side.
3. **Predictability horizon.** The first step at which the ensemble's own spread (the largest
   relative distance between any two of the reference and its reruns) exceeds ``CHAOS_LEVEL``: from
   there on rounding alone has moved runs apart by that much, and no single step can be compared.
   Tests 1-2 judge the steps before the horizon; after it the other side's loss must lie within
   the ensemble's distribution: at the typical step (the median over the steps after the horizon)
   its distance from the ensemble's median within ``SPREAD_MULTIPLE`` x the ensemble's own largest
   distance from it; and so must its final metrics, if given.

4. **Weight norm against float64** (when the runs' weight norms are given, e.g. at each epoch's
   end): each run's global weight norm's running max relative distance from the float64 run's;
   the other side's must stay within ``ACCURACY_FACTOR`` x the largest of the reference's and its
   ensemble's (at least ``NORM_MINIMUM``), over the whole run, horizon or not. The loss is one
   number a step, in which a small bias of the update (a weight decay 1% off) hides under the
   rounding noise; the norm sums over every weight, so rounding moves it as a random walk while a
   biased update moves it one way. A failing norm is a disagreement whatever the losses say.

In bf16-mixed the ensemble trains in it too, one float32 ulp off (``ml_patterns.ulps.INITIAL_ULPS``),
the floor at least half a bfloat16 eps of the loss; bugs smaller than bfloat16's resolution are not
seen (docs/PARITY.md).

A bug moves the losses by its own size from its first update, far above the floor and the other
side's error far above the reference's; a check that compared nothing (no steps, fewer reruns than
asked, a NaN) fails and says why. The constants are chosen from ``ml_patterns_bench.calibrate_verdict``'s
matrix of correct runs and injected bugs (docs/PARITY.md gives its error rates and margins).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from ml_patterns.parity import LOSS, Tolerance
from ml_patterns.ulps import ulps_off

# How far above the ensemble floor the drift may go. Calibration (docs/PARITY.md): correct runs reached 1.02
# floors (1.42 in parity_tests/test_verdict_chaos.py), the mildest bug caught 4.57.
FLOOR_MULTIPLE = 3.0
# How far from the ensemble's median the other side may lie after the horizon (at the typical step,
# and each final metric), in the ensemble's own largest distance from it: 4 draws (torch and 3
# reruns) bound a distribution loosely. Calibration: correct runs' typical step at most 0.43 (single
# steps up to 16, a rerun against the other three up to 47: why not every step), the chaotic CNN of
# parity_tests/test_verdict_chaos.py 0.21.
SPREAD_MULTIPLE = 5.0
# How much larger than the reference's float32 error (against float64) the other side's may be, for
# the losses and for the weight norm. Calibration: correct runs at most 0.83 on the losses (0.96 in
# the chaotic CNN) and 1.07 on the norm; the mildest bugs caught 5.26 (losses) and 8.8 (norm).
ACCURACY_FACTOR = 3.0
# The ensemble's relative spread from which runs count as chaotic: a thousand times the float32
# single-call loss tolerance; a run's losses are then predictable to no better than 0.1%.
CHAOS_LEVEL = 1e-3
# The smallest weight-norm error a float32 run is held to: float32's resolution. Every torch run
# measured drifts further from float64 than this (1.6e-7 and more, its own one-way rounding); the
# single-call loss tolerance (1e-6), used at first, sat above all of them and hid a weight decay 1%
# off over 63 steps (docs/PARITY.md).
NORM_MINIMUM = float(np.finfo(np.float32).eps)
# Reruns (K): the floor is the largest of K divergences, so one low draw cannot set it.
ENSEMBLE_SIZE = 3

AGREE, CHAOTIC, DISAGREE = "agree", "chaotic", "disagree"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome (``AGREE``, ``CHAOTIC``: agreed step by step up to the horizon and in distribution
    after it, or ``DISAGREE``), the test that ``decided`` it, and the measurements behind it.

    Arrays are ``[T]`` float64: ``drift``, ``floor``, ``other_error``/``reference_error`` (float64
    anchor, NaN without one), ``spread`` (the ensemble's own). ``worst_floor_ratio`` and
    ``worst_accuracy_ratio`` are over the steps before the horizon, ``worst_norm_ratio`` over the
    whole run (each NaN when not measured);
    ``first_outside`` the first step no test accepts, or None."""

    outcome: str
    decided: str
    reason: str
    steps: int
    horizon: int | None
    first_outside: int | None
    worst_floor_ratio: float
    worst_floor_step: int | None
    worst_accuracy_ratio: float
    drift: np.ndarray
    floor: np.ndarray
    other_error: np.ndarray
    reference_error: np.ndarray
    spread: np.ndarray
    multiple: float
    accuracy_factor: float
    worst_norm_ratio: float = np.nan

    @property
    def passed(self) -> bool:
        return self.outcome in (AGREE, CHAOTIC)

    def summary(self) -> str:
        """One line: the outcome, the test that decided it, and why."""
        head = {AGREE: "agree", CHAOTIC: f"agree, chaotic from step {self.horizon}", DISAGREE: "DISAGREE"}
        return f"{head[self.outcome]} (decided by {self.decided}): {self.reason}"


def one_ulp(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``values`` with every entry moved by one ulp, up or down at random (same dtype): an ensemble
    member's initial weights (and, after every step, its weights again), a change of nothing but rounding
    (``ml_patterns.ulps.ulps_off`` moves by more)."""
    return ulps_off(values, rng)


def relative_distance(values, reference) -> np.ndarray:
    """|values - reference| / |reference|, float64, broadcasting ``[..., T]`` against ``[T]``."""
    reference = np.asarray(reference, np.float64)
    return np.abs(np.asarray(values, np.float64) - reference) / np.abs(reference)


def ensemble_floor(reference, ensemble, minimum: Tolerance = LOSS) -> np.ndarray:
    """floor[t]: the running max of the ensemble's largest relative distance from ``reference``, at
    least ``minimum.rtol + minimum.atol / |reference|``. ``ensemble`` ``[K, T]``, K >= 1."""
    reference = np.asarray(reference, np.float64)
    divergence = np.maximum.accumulate(relative_distance(ensemble, reference).max(axis=0))
    return np.maximum(divergence, minimum.rtol + minimum.atol / np.abs(reference))


def accuracy_errors(reference, other, ensemble, anchor, minimum: Tolerance = LOSS) -> tuple[np.ndarray, np.ndarray]:
    """(other's error, the reference's error) against the float64 ``anchor``, each a running max of
    the relative distance; the reference's is the largest over it and its ensemble, at least the
    single-call loss tolerance (a float32 run cannot be held closer to float64 than that)."""
    anchor = np.asarray(anchor, np.float64)
    family = np.vstack([np.asarray(reference, np.float64)[None], np.asarray(ensemble, np.float64)])
    reference_error = np.maximum.accumulate(relative_distance(family, anchor).max(axis=0))
    reference_error = np.maximum(reference_error, minimum.rtol + minimum.atol / np.abs(anchor))
    return np.maximum.accumulate(relative_distance(other, anchor)), reference_error


def global_norm(arrays) -> float:
    """The L2 norm of every floating-point array in ``arrays`` (a mapping of numpy-convertible
    arrays, e.g. a model's weights) together, computed in float64."""
    values = [
        np.asarray(a, np.float64).ravel() for a in arrays.values() if np.issubdtype(np.asarray(a).dtype, np.floating)
    ]
    return float(np.sqrt(sum(np.dot(v, v) for v in values)))


def ensemble_spread(reference, ensemble) -> np.ndarray:
    """spread[t]: the largest relative distance between any two of the reference and its reruns,
    (max - min) / |median|."""
    family = np.vstack([np.asarray(reference, np.float64)[None], np.asarray(ensemble, np.float64)])
    return (family.max(axis=0) - family.min(axis=0)) / np.abs(np.median(family, axis=0))


def predictability_horizon(spread: np.ndarray, level: float = CHAOS_LEVEL) -> int | None:
    """The first step whose ensemble spread exceeds ``level``, or None."""
    beyond = np.flatnonzero(spread > level)
    return int(beyond[0]) if beyond.size else None


def spread_ratio(other, family, minimum: Tolerance = LOSS) -> np.ndarray:
    """Per column: ``other`` ``[T]``'s distance from the median of ``family`` ``[N, T]``, in units of
    the family's largest distance from that median (at least the loss tolerance). ``[T]``."""
    family = np.asarray(family, np.float64)
    center = np.median(family, axis=0)
    reach = np.maximum(np.abs(family - center).max(axis=0), minimum.rtol * np.abs(center) + minimum.atol)
    return np.abs(np.asarray(other, np.float64) - center) / reach


def judge(
    reference,
    other,
    ensemble,
    anchor=None,
    *,
    norms: Mapping[str, np.ndarray] | None = None,
    runs: int = ENSEMBLE_SIZE,
    minimum: Tolerance = LOSS,
    multiple: float = FLOOR_MULTIPLE,
    accuracy_factor: float = ACCURACY_FACTOR,
    spread_multiple: float = SPREAD_MULTIPLE,
    chaos_level: float = CHAOS_LEVEL,
    metrics: Mapping[str, tuple[float, float, list[float]]] | None = None,
) -> Verdict:
    """The verdict on ``other`` against ``reference`` (the module docstring defines the tests).

    Args:
        reference, other: per-step losses ``[T]``.
        ensemble: ``[K, T]``, the reference rerun from one-ulp-off weights; fewer than ``runs`` rows fails.
        anchor: ``[T]``, the reference in float64, or None (the floor alone decides before the horizon).
        minimum: the single-call loss tolerance of the device (``parity.tolerance("loss", kind)``).
        metrics: ``{name: (reference's, other's, [each rerun's])}`` final metrics, judged after a horizon.
        norms: the runs' global weight norms at the same E points (e.g. each epoch's end), ``{"reference",
            "other", "anchor": [E], "ensemble": [K, E]}``, or None (test 4 not run; it needs the anchor).

    Raises ``ValueError`` when the arrays' lengths differ (a caller's bug, not a disagreement).
    """
    judged = _judge_losses(
        reference,
        other,
        ensemble,
        anchor,
        runs,
        minimum,
        multiple,
        accuracy_factor,
        spread_multiple,
        chaos_level,
        metrics,
    )
    if norms is None:
        return judged
    normed = judge_norms(judged, norms, runs, accuracy_factor)
    return normed if judged.passed else dataclasses.replace(judged, worst_norm_ratio=normed.worst_norm_ratio)


def judge_norms(
    judged: Verdict, norms: Mapping[str, np.ndarray], runs: int, factor: float, minimum: float = NORM_MINIMUM
) -> Verdict:
    """``judged`` (the losses' verdict) with test 4, the weight norm against float64, applied."""
    names = ("reference", "other", "anchor", "ensemble")
    missing = [name for name in names if norms.get(name) is None or np.size(norms[name]) == 0]
    if missing:
        why = f"the weight norms of {', '.join(missing)} were not measured: the norm test compared nothing"
        return dataclasses.replace(judged, outcome=DISAGREE, decided="input checks", reason=why)
    anchor = np.asarray(norms["anchor"], np.float64)
    ensemble = np.atleast_2d(np.asarray(norms["ensemble"], np.float64))
    family = np.vstack([np.asarray(norms["reference"], np.float64)[None], ensemble])
    other = np.asarray(norms["other"], np.float64)
    if family.shape[1] != anchor.size or other.size != anchor.size:
        raise ValueError(f"weight norms at {anchor.size} points for the anchor but {family.shape[1]} and {other.size}")
    if ensemble.shape[0] < runs or not np.all(np.isfinite(family)) or not np.all(np.isfinite(anchor)):
        why = f"{ensemble.shape[0]} finite ensemble weight norms where {runs} were asked: no measured norm error"
        return dataclasses.replace(judged, outcome=DISAGREE, decided="input checks", reason=why)
    reference_error = np.maximum(np.maximum.accumulate(relative_distance(family, anchor).max(axis=0)), minimum)
    other_error = np.maximum.accumulate(relative_distance(other, anchor))
    ratio = np.where(np.isnan(other_error), np.inf, other_error) / reference_error
    worst = float(ratio.max())
    note = f"weight norm's float64 error at most {worst:.3g}x the reference's (limit {factor:g})"
    if worst <= factor:
        return dataclasses.replace(judged, reason=f"{judged.reason}; {note}", worst_norm_ratio=worst)
    first = int(np.flatnonzero(ratio > factor)[0])
    why = (
        f"the weight norm drifts from float64's: at point {first} its error ({other_error[first]:.2e}) exceeds "
        f"{factor:g}x the reference's ({reference_error[first]:.2e}), though the losses agree ({judged.reason})"
    )
    return dataclasses.replace(
        judged, outcome=DISAGREE, decided="weight norm against float64", reason=why, worst_norm_ratio=worst
    )


def _judge_losses(
    reference, other, ensemble, anchor, runs, minimum, multiple, accuracy_factor, spread_multiple, chaos_level, metrics
) -> Verdict:
    """Tests 1-3, on the losses."""
    reference = np.asarray(reference, np.float64)
    other = np.asarray(other, np.float64)
    steps = reference.size
    ensemble = np.asarray(ensemble, np.float64)
    ensemble = ensemble.reshape(0, steps) if ensemble.size == 0 else np.atleast_2d(ensemble)
    lengths = {"other": other.size, "ensemble": ensemble.shape[1]}
    if anchor is not None:
        lengths["anchor"] = np.asarray(anchor).size
    if any(n != steps for n in lengths.values()):
        raise ValueError(f"reference has {steps} steps but {lengths}: the runs must be step for step")
    empty = np.full(steps, np.nan)
    base = {"steps": steps, "multiple": multiple, "accuracy_factor": accuracy_factor}

    def failed(reason: str) -> Verdict:
        unmeasured = {"drift": empty, "floor": empty, "other_error": empty, "reference_error": empty, "spread": empty}
        return Verdict(
            DISAGREE,
            "input checks",
            reason,
            horizon=None,
            first_outside=None,
            worst_floor_ratio=np.nan,
            worst_floor_step=None,
            worst_accuracy_ratio=np.nan,
            **unmeasured,
            **base,
        )

    if steps == 0:
        return failed("no steps were compared")
    if ensemble.shape[0] < runs:
        return failed(f"{ensemble.shape[0]} one-ulp reruns where {runs} were asked: no measured floor")
    inputs = {"reference": reference, "ensemble": ensemble, **({"anchor": anchor} if anchor is not None else {})}
    for name, values in inputs.items():
        if not np.all(np.isfinite(values)):
            return failed(f"the {name} run's losses are not all finite: the noise cannot be measured")

    drift = relative_distance(other, reference)
    floor = ensemble_floor(reference, ensemble, minimum)
    spread = ensemble_spread(reference, ensemble)
    horizon = predictability_horizon(spread, chaos_level)
    before = slice(0, steps if horizon is None else horizon)
    floor_ok = drift <= multiple * floor  # a NaN drift is outside
    if anchor is not None:
        other_error, reference_error = accuracy_errors(reference, other, ensemble, anchor, minimum)
        accuracy_ok = other_error <= accuracy_factor * reference_error
    else:
        other_error = reference_error = empty
    ratio = np.where(np.isnan(drift), np.inf, drift)[before] / floor[before]
    worst_floor = float(ratio.max()) if ratio.size else np.nan
    worst_step = int(ratio.argmax()) if ratio.size else None
    accuracy_ratio = np.where(np.isnan(other_error), np.inf, other_error)[before] / reference_error[before]
    worst_accuracy = float(accuracy_ratio.max()) if ratio.size and anchor is not None else np.nan
    found = {
        "horizon": horizon,
        "worst_floor_ratio": worst_floor,
        "worst_floor_step": worst_step,
        "worst_accuracy_ratio": worst_accuracy,
        "drift": drift,
        "floor": floor,
        "other_error": other_error,
        "reference_error": reference_error,
        "spread": spread,
        **base,
    }

    floor_note = f"drift up to {worst_floor:.3g}x the ensemble floor (limit {multiple:g})"
    accuracy_note = f"float64 error at most {worst_accuracy:.3g}x the reference's (limit {accuracy_factor:g})"
    if horizon == 0:
        decided, why = "ensemble spread", "no step before the horizon"
    elif anchor is not None and np.all(accuracy_ok[before]):
        decided, why = "float64 anchor", f"{accuracy_note}; {floor_note}"
    elif np.all(floor_ok[before]):
        decided = "ensemble floor"
        why = floor_note + ("" if anchor is None else f"; {accuracy_note}")
    else:
        failing = ~floor_ok if anchor is None else ~(floor_ok | accuracy_ok)
        first = int(np.flatnonzero(failing[before])[0])
        why = (
            f"from step {first} the drift ({drift[first]:.2e}) exceeds {multiple:g}x the ensemble floor "
            f"({floor[first]:.2e})"
        )
        if anchor is None:
            why += "; no float64 anchor"
        else:
            why += (
                f" and its float64 error ({other_error[first]:.2e}) {accuracy_factor:g}x the reference's "
                f"({reference_error[first]:.2e})"
            )
        return Verdict(DISAGREE, "ensemble floor and float64 anchor", why, first_outside=first, **found)
    if horizon is None:
        return Verdict(AGREE, decided, why, first_outside=None, **found)

    family = np.vstack([reference[None], ensemble])
    # The typical step, not every step: past the horizon a run's loss strays now and then far outside
    # the few reruns' range (a rerun does so against the others), as draws of a heavy-tailed
    # distribution do; a bug shifts it at most steps.
    ratio = spread_ratio(other[horizon:], family[:, horizon:], minimum)
    typical = float(np.median(np.where(np.isnan(ratio), np.inf, ratio)))
    if not typical <= spread_multiple:
        first = horizon + int(np.flatnonzero(~(ratio <= spread_multiple))[0])
        why = (
            f"chaotic from step {horizon} (ensemble spread above {chaos_level:g}); after it the loss lies a median "
            f"{typical:.3g}x the ensemble's spread from its median (limit {spread_multiple:g}), first outside at "
            f"step {first} ({other[first]:.7g})"
        )
        return Verdict(DISAGREE, "distributions after the horizon", why, first_outside=first, **found)
    for name, (ours, theirs, reruns) in (metrics or {}).items():
        values = np.asarray([ours, *reruns], np.float64)[:, None]
        if not spread_ratio([theirs], values, minimum)[0] <= spread_multiple:
            why = (
                f"chaotic from step {horizon}; the final {name} {theirs:.6g} lies outside {spread_multiple:g}x "
                "the ensemble's spread"
            )
            return Verdict(DISAGREE, "distributions after the horizon", why, first_outside=None, **found)
    why = (
        f"before step {horizon}: {why}; from it (ensemble spread above {chaos_level:g}) the loss a median "
        f"{typical:.3g}x the ensemble's spread from its median"
        + (", every final metric" if metrics else "")
        + f" within {spread_multiple:g}x"
    )
    return Verdict(CHAOTIC, f"{decided}, then distributions", why, first_outside=None, **found)
