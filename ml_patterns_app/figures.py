"""Figures shared by ``compare`` and the porting toolkit, below both (matplotlib, no framework).

``drift_figure``: the per-step losses and their drift against the float32 noise the verdict measures
(``ml_patterns.verdict``, which defines the floor, the float64 anchor and the horizon).
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ml_patterns.verdict import Verdict


def drift_figure(reference_losses, other_losses, ensemble_losses, verdict: Verdict, names=("torch", "nnx")) -> Figure:
    """Two panels: the per-step losses overlaid (the ensemble's as a band); the relative differences
    (log) with the ensemble floor, the agreement band, each side's distance from float64 where
    measured, and the predictability horizon where there is one."""
    reference, other = np.asarray(reference_losses, np.float64), np.asarray(other_losses, np.float64)
    ensemble = np.asarray(ensemble_losses, np.float64)
    steps = np.arange(len(reference))
    figure = Figure(figsize=(8, 7), layout="tight")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.fill_between(steps, ensemble.min(axis=0), ensemble.max(axis=0), color="gray", alpha=0.3,
                     label=f"{names[0]}, {len(ensemble)} reruns one ulp off")  # fmt: skip
    top.plot(steps, reference, label=names[0])
    top.plot(steps, other, "--", label=names[1])
    top.set_ylabel("loss")
    top.legend(fontsize="small")
    low = 1e-9  # exact agreement (zero) is drawn here, at the bottom of the log axis
    band = verdict.multiple * verdict.floor
    bottom.fill_between(steps, low, band, alpha=0.2, label=f"agreement band ({verdict.multiple:g} x floor)")
    bottom.plot(steps, verdict.floor, color="gray", label="ensemble floor (running max, >= loss tolerance)")
    bottom.plot(steps, np.maximum(verdict.drift, low), ".", ms=3, label=f"|{names[1]} - {names[0]}| / |{names[0]}|")
    if not np.all(np.isnan(verdict.other_error)):
        bottom.plot(steps, verdict.reference_error, ":", color="black", label=f"{names[0]}'s distance from float64")
        bottom.plot(steps, verdict.other_error, ":", label=f"{names[1]}'s distance from float64")
    if verdict.horizon is not None:
        for axis in (top, bottom):
            axis.axvline(verdict.horizon, color="red", lw=0.8)
        bottom.text(verdict.horizon, band.max(), f" chaotic from step {verdict.horizon}", color="red", fontsize="small")
    bottom.set_yscale("log")
    bottom.set_ylim(low / 2, None)
    bottom.set_xlabel("step")
    bottom.set_ylabel("relative difference of the loss")
    bottom.legend(fontsize="small", loc="upper left")
    return figure
