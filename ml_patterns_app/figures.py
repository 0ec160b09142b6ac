"""Figures shared by ``compare`` and the porting toolkit, below both (matplotlib, no framework).

``drift_figure``: the per-step losses and their drift against the float32 noise floor
(``ml_patterns.parity_floor``, which defines both).
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ml_patterns.parity_floor import FLOOR_MULTIPLE, drift_and_floor


def drift_figure(
    reference_losses, other_losses, one_ulp_losses, names=("torch", "nnx"), multiple: float = FLOOR_MULTIPLE
) -> Figure:
    """Two panels: the per-step losses overlaid; |relative difference| (log) with the floor and its band."""
    reference, other = np.asarray(reference_losses, np.float64), np.asarray(other_losses, np.float64)
    perturbed = np.asarray(one_ulp_losses, np.float64)
    drift, floor = drift_and_floor(reference, other, perturbed)
    steps = np.arange(len(reference))
    figure = Figure(figsize=(8, 7), layout="tight")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot(steps, reference, label=names[0])
    top.plot(steps, other, "--", label=names[1])
    top.plot(steps, perturbed, ":", label=f"{names[0]}, weights one ulp off")
    top.set_ylabel("loss")
    top.legend(fontsize="small")
    low = 1e-9  # exact agreement (zero) is drawn here, at the bottom of the log axis
    noise = np.abs(perturbed - reference) / np.abs(reference)
    bottom.fill_between(steps, low, multiple * floor, alpha=0.2, label=f"agreement band ({multiple:g} x floor)")
    bottom.plot(steps, floor, color="gray", label="noise floor (running max, >= loss tolerance)")
    bottom.plot(steps, np.maximum(noise, low), ".", color="gray", ms=2, label=f"{names[0]} vs {names[0]} one ulp off")
    bottom.plot(steps, np.maximum(drift, low), ".", ms=3, label=f"|{names[1]} - {names[0]}| / |{names[0]}|")
    bottom.set_yscale("log")
    bottom.set_ylim(low / 2, None)
    bottom.set_xlabel("step")
    bottom.set_ylabel("relative difference of the loss")
    bottom.legend(fontsize="small", loc="upper left")
    return figure
