"""``ml-patterns compare``'s report on disk: ``results.json``, ``report.md`` and its three plots,
written from the report ``report.build_report`` makes.

The report folder is marked as one (``ml_patterns.outputs``): ``--out`` may name a new or empty
folder or an earlier report, never a folder of other files, the dataset being read (or a folder
holding it), nor the working directory; ``check_report_destination`` refuses the others before any
training, so no run's time is spent on a report that could not be written.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ml_patterns.io import atomic_write_bytes, atomic_write_text, staged_directory
from ml_patterns.outputs import MARKER, check_output, foreign_output, mark_output
from ml_patterns_app.compare.report import judge_steps
from ml_patterns_app.compare.settings import BACKENDS, LABELS
from ml_patterns_app.compare.summary import format_summary
from ml_patterns_app.figures import drift_figure

# Each backend's trained weights (portable checkpoints: either backend loads either) and the
# dataset's vocabulary beside them: what `ml-patterns predict --model FOLDER` reads.
WEIGHTS = {backend: f"{backend}.safetensors" for backend in BACKENDS}
VOCABULARY = "vocab.json"
FILES = ("report.md", "results.json", "loss_curves.png", "drift.png", "speed.png", *WEIGHTS.values(), VOCABULARY)
KIND = "compare report"


def check_report_destination(out: Path, data: Path | None) -> None:
    """Raises ``DestinationError`` (one line saying why) unless ``write_report`` may replace ``out``
    (``data``: the dataset read, None when your own batches are)."""
    check_output(out, KIND, protect=() if data is None else (data,), recognise=_report_files_only)


def write_report(report: dict, out: Path, data: Path | None = None, trained: dict[str, bytes] | None = None) -> None:
    """Writes ``FILES`` into ``out``, replacing it as a whole and only once all are written: an
    interruption (Ctrl-C, a crash, a full disk) leaves the previous report, never half of a new one.
    ``out`` is checked again as ``check_report_destination`` does (``data``: the dataset read, whose
    vocabulary is copied; ``trained``: each backend's trained checkpoint, as bytes)."""
    protect = () if data is None else (data,)
    foreign = foreign_output(KIND, _report_files_only)
    with staged_directory(out, overwrite=True, foreign=foreign, protect=protect) as staging:
        mark_output(staging, KIND)
        atomic_write_text(staging / "results.json", json.dumps(report, indent=1) + "\n")
        atomic_write_text(staging / "report.md", _markdown(report))
        atomic_write_bytes(staging / "loss_curves.png", _png(_loss_curves(report)))
        losses, metrics = report["parity"]["steps"]["losses"], report["test_metrics"]
        judged = judge_steps(losses, report["noise_floor"], metrics, metrics["torch_one_ulp"])
        figure = drift_figure(losses["torch"], losses["jax"], losses["ensemble"], judged, names=("torch", "jax"))
        atomic_write_bytes(staging / "drift.png", _png(figure))
        atomic_write_bytes(staging / "speed.png", _png(_speed_bars(report)))
        for backend, weights in (trained or {}).items():
            atomic_write_bytes(staging / WEIGHTS[backend], weights)
        if data is not None:
            atomic_write_bytes(staging / VOCABULARY, (data / VOCABULARY).read_bytes())


def _report_files_only(folder: Path) -> bool:
    """A report written before report folders were marked: ``FILES`` and nothing else."""
    return {entry.name for entry in folder.iterdir()} <= {*FILES, MARKER}


def _markdown(report: dict) -> str:
    env, dataset = report["environment"], report["dataset"]
    pair = dataset.get("pair")
    model = f"{report['settings']['model']} model" if pair is None else f"{pair['torch']} | {pair['jax']}"
    lines = [f"# ml-patterns compare: {model}, {report['settings']['epochs']} epochs", ""]
    if pair is None:
        lines.append(
            f"- data: {dataset['source']} ({dataset['path']}), splits {dataset['splits']}; sequences truncated "
            f"to {dataset['max_length']} tokens: {dataset['truncated_molecules']} molecules"
        )
    else:
        lines.append(f"- data: {dataset['source']}, validation: {dataset['val'] or 'none'}")
    lines.append(f"- machine: {env['platform']}, {env['processor']}, {env['cpus_available']} CPUs available")
    for backend, info in report["backends"].items():
        versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
        lines.append(
            f"- {LABELS[backend]}: {info['device']['name']}; {versions}; threads {info['threads']}; "
            f"precision: {info['precision']}"
        )
    lines.append(f"- wall time of the whole comparison: {report['wall_time_s']:.0f} s")
    return (
        "\n".join(lines)
        + "\n\n"
        + format_summary(report)
        + "\n\n![loss curves](loss_curves.png)\n![drift against the noise floor](drift.png)\n![speed](speed.png)\n"
    )


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def _loss_curves(report: dict) -> Figure:
    figure = Figure(figsize=(6, 4), layout="tight")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    epochs = [row["epoch"] for row in report["parity"]["epochs"]]
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        if key not in report["parity"]["epochs"][0]:
            continue  # no validation batches
        for backend, marker in (("torch", "o"), ("jax", "x")):
            values = [row[key][backend] for row in report["parity"]["epochs"]]
            ax.plot(epochs, values, style, marker=marker, label=f"{LABELS[backend]} {key}")
    ax.set_xticks(epochs)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Training histories (the curves should overlap)")
    ax.legend(fontsize=8)
    return figure


def _speed_bars(report: dict) -> Figure:
    figure = Figure(figsize=(8, 3.5), layout="tight")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    runs = list(report["speed"])
    names = [LABELS[b] for b in runs]
    colors = [{"torch": "#ee4c2c", "torch_compile": "#f5a05a", "jax": "#4285f4"}[b] for b in runs]
    axes[0].bar(names, [report["speed"][b]["samples_per_s"] or 0.0 for b in runs], color=colors)
    axes[0].set_ylabel("samples/s (steady state, higher is better)")
    axes[1].bar(names, [report["speed"][b]["warmup_s"] or 0.0 for b in runs], color=colors)
    axes[1].set_ylabel("warm-up / compile time, s")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    verdict = report["verdict"]
    figure.suptitle(verdict[:90] + ("..." if len(verdict) > 90 else ""), fontsize=8)
    return figure
