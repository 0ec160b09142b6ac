"""bench.png: one panel per benchmark, a group of bars per workload (and device), one bar per contender.

Bars are throughput (longer is faster), labelled with the value and, where the workload counts its
FLOPs, the fraction of the device's measured matmul peak. Drawn with matplotlib's object API and the
Agg canvas: no pyplot, no global backend switch, no display needed.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ml_patterns.io import atomic_write_bytes

COLORS = {"torch eager": "#ee4c2c", "torch.compile": "#8c1d0e", "jax.jit": "#4a7fd4"}
OTHER_COLOR = "#7f7f7f"
BAR_INCHES = 0.28


def write_chart(report: dict, path: Path) -> None:
    results = report["results"]
    benchmarks = list(dict.fromkeys(row["benchmark"] for row in results))
    several_devices = len({row["device"] for row in results}) > 1
    heights = [max(1, len(_rows(results, name))) * BAR_INCHES + 0.9 for name in benchmarks]
    figure = Figure(figsize=(11, max(2.0, sum(heights) + 0.6)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(benchmarks), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, name in zip(axes, benchmarks):
        _panel(ax, _rows(results, name), several_devices)
        ax.set_title(name, loc="left", fontsize=10, fontweight="bold")
    quick = ", quick run" if report.get("quick") else ""
    figure.suptitle(f"ml-patterns bench, {report['created_at']}{quick}: throughput (longer is faster)", fontsize=11)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())


def _rows(results: list[dict], benchmark: str) -> list[dict]:
    return [row for row in results if row["benchmark"] == benchmark]


def _panel(ax, rows: list[dict], several_devices: bool) -> None:
    groups = list(dict.fromkeys((row["workload"], row["device"]) for row in rows))
    contenders = list(dict.fromkeys(row["contender"] for row in rows))
    slot = 1.0 / (len(contenders) + 0.5)
    for c_index, contender in enumerate(contenders):
        label = contender  # once per contender, on its first bar
        for g_index, group in enumerate(groups):
            row = next((r for r in rows if (r["workload"], r["device"]) == group and r["contender"] == contender), None)
            if row is None:
                continue
            y = g_index + (c_index - (len(contenders) - 1) / 2) * slot
            value = row["throughput"]["value"]
            ax.barh(y, value, height=slot * 0.9, color=COLORS.get(contender, OTHER_COLOR), label=label)
            label = None
            fraction = row.get("fraction_of_peak")
            text = f" {value:,.0f}" if value >= 100 else f" {value:.3g}"
            ax.text(value, y, text + (f" ({fraction:.0%} of peak)" if fraction else ""), va="center", fontsize=7)
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels([f"{w} [{d}]" if several_devices else w for w, d in groups], fontsize=8)
    ax.invert_yaxis()
    values = [row["throughput"]["value"] for row in rows]
    if max(values) / min(values) > 30:
        ax.set_xscale("log")
    ax.set_xlim(right=max(values) * (8 if ax.get_xscale() == "log" else 1.45))
    ax.set_xlabel(", ".join(dict.fromkeys(row["throughput"]["unit"] for row in rows)), fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7, loc="lower right")
