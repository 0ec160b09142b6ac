"""``compare --precision bf16-mixed``: the verdict's noise measured in bfloat16, and how far bfloat16
moves each backend from its own float32 run.

In bf16-mixed the compared runs and the verdict's ensemble train in bf16-mixed (float32 master
weights, bfloat16 compute: docs/PRECISION.md); the ensemble starts one float32 ulp off, as in
float32 (``ml_patterns.ulps.INITIAL_ULPS``); the floor is at least ``MIXED_LOSS_MINIMUM``; the
float64 anchor stays float64, without autocast. Each backend also trains in float32 from
the same initial weights and batches: the report's "bf16-mixed vs float32" section, information
beside the agreement verdict, never part of it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ml_patterns import parity
from ml_patterns.molecules.metrics import BASELINE
from ml_patterns.parity import Tolerance
from ml_patterns.precision import MIXED
from ml_patterns_app.compare.settings import LABELS, CompareSettings, WorkerResult

FLOAT32 = "float32"
# The verdict's smallest floor in bf16-mixed: half a bfloat16 eps of the loss (relative 2^-9), the
# resolution below which two correct bf16-mixed computations of one loss are not told apart. Calibration
# (docs/PARITY.md): correct runs on the same weights (step 0) differed by at most 4.6e-4, 4x below it;
# the bfloat16 loss row of the single-call tolerances (4 eps, 1.6e-2) used before sat 34x above them
# and let a learning rate 1.5x off clear the loss tests by 1.14x; float32's raised a false alarm.
MIXED_LOSS_MINIMUM = Tolerance(rtol=parity.BF16_EPS / 2, atol=0.0)


def float32_settings(settings: CompareSettings) -> CompareSettings:
    """``settings`` in float32: the float64 anchor's (its model is float64, and autocast must not
    touch it) and, in bf16-mixed, each backend's float32 twin run."""
    return dataclasses.replace(settings, precision=FLOAT32)


def loss_minimum(precision: str, device_kind: str) -> Tolerance:
    """The verdict's smallest floor (``judge``'s ``minimum``): float32's single-call loss tolerance
    for ``device_kind``, or in bf16-mixed ``MIXED_LOSS_MINIMUM``."""
    if precision == MIXED:
        return MIXED_LOSS_MINIMUM
    return parity.tolerance("loss", device_kind)


def run_precision(training: str, policy: str) -> str:
    """A run's precision: the runtime's float32 policy (``policy``), after the training precision
    where that is not float32."""
    return policy if training == "float32" else f"{training} (float32 ops: {policy})"


def ensemble_moves(noise: dict) -> str:
    """How the report's ``noise_floor`` moved the reruns' weights, in words."""
    ulps = noise.get("initial_ulps", 1)
    return "one ulp off at every step" if ulps == 1 else f"{ulps} ulps off at the start, one ulp at every step"


def distance_from_float32(mixed: WorkerResult, float32: WorkerResult) -> dict:
    """One backend's bf16-mixed run against its float32 run from the same weights and batches: the
    per-step relative loss distance |bf16 - float32| / |float32| (median, max, and the step of the
    max), and each final test metric and the last epoch's losses side by side."""
    steps = np.asarray(float32.step_losses, np.float64)
    ours = np.asarray(mixed.step_losses, np.float64)
    if steps.size != ours.size:  # both trained the same batches: a bug
        raise ValueError(
            f"step losses: {ours.size} in bf16-mixed, {steps.size} in float32: the runs must be step for step"
        )
    distance = np.abs(ours - steps) / np.abs(steps) if steps.size else np.full(1, np.nan)  # NaN: nothing compared
    finals = {
        **{
            f"final {key}": (mixed.history[key][-1], float32.history[key][-1])
            for key in ("train_loss", "val_loss")
            if key in mixed.history
        },
        **{
            name: (value, float32.test_metrics[name])
            for name, value in mixed.test_metrics.items()
            if name in float32.test_metrics and not name.startswith(BASELINE)  # a baseline is the data's
        },
    }
    return {
        "steps": int(steps.size),
        "median_rel_distance": float(np.median(distance)),
        "max_rel_distance": float(distance.max()),
        "max_step": int(distance.argmax()) if steps.size else None,
        "final": {
            name: {
                "bf16_mixed": a,
                "float32": b,
                "difference": a - b,
                "rel_difference": abs(a - b) / max(abs(b), 1e-30),
            }
            for name, (a, b) in finals.items()
        },
        "step_losses_float32": float32.step_losses,
    }


def precision_section(mixed: dict[str, WorkerResult], float32: dict[str, WorkerResult], drift) -> dict:
    """The report's ``"bf16_vs_float32"``: each backend's ``distance_from_float32``, and for scale the
    median relative step distance between the two backends in bf16-mixed (``drift``: the verdict's)."""
    return {
        "note": "information, not part of the agreement verdict: how far bf16-mixed moves each backend from its "
        "own float32 run (same initial weights and batches)",
        "backends": {backend: distance_from_float32(mixed[backend], run) for backend, run in float32.items()},
        "median_rel_drift_between_backends": float(np.median(drift)) if np.size(drift) else float("nan"),
    }


def format_precision_section(section: dict | None) -> list[str]:
    """The summary's lines for ``precision_section`` (none when compare ran in float32)."""
    if section is None:
        return []
    backends = section["backends"]
    lines = [
        "",
        "bf16-mixed vs float32 (information, not part of the agreement verdict): each backend's bf16-mixed run "
        "against its own float32 run from the same weights and batches; for scale, the two backends' median "
        f"relative step distance in bf16-mixed: {section['median_rel_drift_between_backends']:.2e}",
        "| backend | per-step relative loss distance, median | max (step) |",
        "|---|---|---|",
        *(
            f"| {LABELS[b]} | {d['median_rel_distance']:.2e} | {d['max_rel_distance']:.2e} ({d['max_step']}) |"
            for b, d in backends.items()
        ),
        "",
        "| final value | " + " | ".join(f"{LABELS[b]}: bf16-mixed / float32 (rel diff)" for b in backends) + " |",
        "|---" * (len(backends) + 1) + "|",
    ]
    for name in next(iter(backends.values()))["final"]:
        cells = [backends[b]["final"].get(name) for b in backends]
        lines.append(
            f"| {name} | "
            + " | ".join(
                "" if c is None else f"{c['bf16_mixed']:.4f} / {c['float32']:.4f} ({c['rel_difference']:.1e})"
                for c in cells
            )
            + " |"
        )
    return lines
