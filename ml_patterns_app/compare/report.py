"""``ml-patterns compare``'s verdict: the two runs' losses, step by step and epoch by epoch, against
the float32 noise floor measured by a third run (torch from the initial weights moved by one ulp;
``ml_patterns_app.porting.floor``), the test metrics and the speed side by side, written as
``results.json``, ``report.md`` and three plots."""

from __future__ import annotations

import dataclasses
import io
import json
import statistics
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.common import environment
from ml_patterns import parity
from ml_patterns.io import atomic_write_bytes, atomic_write_text, staged_directory
from ml_patterns_app.compare.settings import BACKENDS, FLOOR_RUN, LABELS, CompareSettings
from ml_patterns_app.porting.floor import FLOOR_MULTIPLE, drift_and_floor, drift_figure, first_outside

FILES = ("report.md", "results.json", "loss_curves.png", "drift.png", "speed.png")
AGREE = (
    f"they agree numerically: every step's and every epoch's loss stays within {FLOOR_MULTIPLE:g}x the "
    "float32 noise floor"
)
DISAGREE = (
    f"they DISAGREE: the losses drift beyond {FLOOR_MULTIPLE:g}x the float32 noise floor "
    "(see the parity table and drift.png)"
)


def build_report(settings: CompareSettings, manifest: dict, results: dict, data_dir: Path) -> dict:
    """``results``: each backend's worker result (``worker.run_worker``), and ``FLOOR_RUN``'s (torch
    again, its initial weights one ulp off)."""
    device_kind = "gpu" if any(r["device"]["kind"] == "gpu" for r in results.values()) else "cpu"
    minimum = parity.tolerance("loss", device_kind)
    torch_r, jax_r, floor_r = results["torch"], results["jax"], results[FLOOR_RUN]
    drift, floor = drift_and_floor(torch_r["step_losses"], jax_r["step_losses"], floor_r["step_losses"], minimum)
    first = first_outside(drift, floor)
    ratio = drift / floor
    steps = {
        "count": len(drift),
        "worst_ratio": float(np.max(ratio)),
        "worst_step": int(np.argmax(ratio)),
        "first_outside": first,
        "final_drift": float(drift[-1]),
        "final_floor": float(floor[-1]),
        "losses": {"torch": torch_r["step_losses"], "jax": jax_r["step_losses"], FLOOR_RUN: floor_r["step_losses"]},
    }
    passed = first is None
    torch_h, jax_h, floor_h = torch_r["history"], jax_r["history"], floor_r["history"]
    rows = [{"epoch": epoch} for epoch in range(len(torch_h["epoch"]))]
    for key in ("train_loss", "val_loss"):
        drift_e, floor_e = drift_and_floor(torch_h[key], jax_h[key], floor_h[key], minimum)
        for epoch, row in enumerate(rows):
            ok = bool(drift_e[epoch] <= FLOOR_MULTIPLE * floor_e[epoch])
            passed &= ok
            row[key] = {
                "torch": torch_h[key][epoch],
                "jax": jax_h[key][epoch],
                "torch_one_ulp": floor_h[key][epoch],
                "rel_diff": float(drift_e[epoch]),
                "floor": float(floor_e[epoch]),
                "pass": ok,
            }
    speed = {backend: _speed(results[backend]) for backend in BACKENDS}
    return {
        "settings": dataclasses.asdict(settings),
        "dataset": {
            "path": str(data_dir),
            "source": manifest["source"]["name"],
            "splits": manifest["splits"],
            "max_length": torch_r["max_length"],
            "truncated_molecules": torch_r["truncated"],
        },
        "device_kind": device_kind,
        "noise_floor": {
            "multiple": FLOOR_MULTIPLE,
            "minimum": {"rtol": minimum.rtol, "atol": minimum.atol},
            "how": "torch trained again from the initial weights moved by one ulp; floor = running max of its "
            "relative loss difference, at least the single-call loss tolerance (ml_patterns_app.porting.floor)",
        },
        "parity": {"passed": passed, "steps": steps, "epochs": rows},
        "test_metrics": {backend: results[backend]["test_metrics"] for backend in BACKENDS},
        "speed": speed,
        "backends": {
            backend: {k: results[backend][k] for k in ("device", "versions", "threads", "precision")}
            for backend in BACKENDS
        },
        "environment": environment(),
        "verdict": _verdict(speed, passed, results),
    }


def _difference(a: float, b: float, tolerance) -> dict:
    diff = abs(a - b)
    return {
        "abs_diff": diff,
        "rel_diff": diff / max(abs(a), 1e-30),
        "pass": diff <= tolerance.atol + tolerance.rtol * abs(a),
    }


def add_one_device_parity(report: dict, runs: dict[str, tuple[dict, dict]]) -> None:
    """``--devices N``: ``runs`` is each backend's ``(one-device result, N-device result)``. Checks every
    epoch of the N-device history against the one-device one (the same tolerance), adds the
    scaling, and folds the outcome into ``report["parity"]["passed"]`` and the verdict."""
    tolerance = parity.tolerance("history", report["device_kind"])
    checks = {}
    for backend, (one, many) in runs.items():
        cells = [
            _difference(a, b, tolerance)
            for key in ("train_loss", "val_loss")
            for a, b in zip(one["history"][key], many["history"][key], strict=True)
        ]
        rate_one, rate_many = _speed(one)["samples_per_s"], _speed(many)["samples_per_s"]
        checks[backend] = {
            "max_rel_diff": max(cell["rel_diff"] for cell in cells),
            "pass": all(cell["pass"] for cell in cells),
            "samples_per_s": {"one_device": rate_one, "devices": rate_many},
            "scaling_efficiency": rate_many / (many["devices"] * rate_one),
        }
    devices = next(iter(runs.values()))[1]["devices"]
    agree = all(check["pass"] for check in checks.values())
    report["devices"] = devices
    report["against_one_device"] = checks
    report["parity"]["passed"] = report["parity"]["passed"] and agree
    report["verdict"] += f" On {devices} devices each (torch DDP, JAX sharded), both train " + (
        "as on one device." if agree else "DIFFERENTLY from one device (see the table)."
    )


def _speed(result: dict) -> dict:
    times = result["epoch_times"]
    train = [t["train_s"] for t in times]
    steady = statistics.median(train[1:] or train)
    steps, samples = result["steps_per_epoch"], result["samples_per_epoch"]
    return {
        "first_epoch_s": train[0],
        "steady_epoch_s": steady,
        # The first epoch's extra time: compilation for jax.jit (one per batch shape), warm-up for torch.
        "warmup_s": max(0.0, train[0] - steady),
        "steps_per_s": steps / steady,
        "samples_per_s": samples / steady,
        "epoch_with_validation_s": statistics.median(t["train_s"] + t["val_s"] for t in times[1:] or times),
        "compilations": result.get("compilations"),
        "peak_memory_bytes": result["peak_memory_bytes"],
        "peak_memory_kind": result["peak_memory_kind"],
    }


def _verdict(speed: dict, passed: bool, results: dict) -> str:
    torch_rate, jax_rate = speed["torch"]["steps_per_s"], speed["jax"]["steps_per_s"]
    faster, slower = ("jax", "torch") if jax_rate > torch_rate else ("torch", "jax")
    ratio = max(torch_rate, jax_rate) / min(torch_rate, jax_rate)
    device = results["torch"]["device"]["name"]
    return (
        f"On this machine ({device}), {LABELS[faster]} trains this model {ratio:.2f}x faster than "
        f"{LABELS[slower]} at steady state ({speed[faster]['steps_per_s']:.1f} vs "
        f"{speed[slower]['steps_per_s']:.1f} steps/s), and {AGREE if passed else DISAGREE}."
    )


def format_summary(report: dict) -> str:
    floor, steps = report["noise_floor"], report["parity"]["steps"]
    first = "none" if steps["first_outside"] is None else f"step {steps['first_outside']}"
    lines = [
        f"Parity against the float32 noise floor (torch rerun with its initial weights one ulp off; agreement: "
        f"drift <= {floor['multiple']:g}x floor):",
        f"- every step ({steps['count']}): largest drift/floor {steps['worst_ratio']:.3g} (step {steps['worst_step']}),"
        f" first step outside: {first}; at the last step drift {steps['final_drift']:.2e}, floor "
        f"{steps['final_floor']:.2e}",
        "| epoch | loss | torch | jax | torch, one ulp off | rel diff | floor | pass |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["parity"]["epochs"]:
        for key in ("train_loss", "val_loss"):
            cell = row[key]
            lines.append(
                f"| {row['epoch']} | {key} | {cell['torch']:.6f} | {cell['jax']:.6f} | {cell['torch_one_ulp']:.6f} "
                f"| {cell['rel_diff']:.2e} | {cell['floor']:.2e} | {'yes' if cell['pass'] else 'NO'} |"
            )
    if "against_one_device" in report:
        lines += [
            "",
            f"Each backend on {report['devices']} devices against its own one-device run (history tolerance):",
            "| backend | max rel diff, every epoch | pass | samples/s, 1 device | samples/s, N devices | scaling |",
            "|---|---|---|---|---|---|",
        ]
        for backend, check in report["against_one_device"].items():
            rates = check["samples_per_s"]
            lines.append(
                f"| {LABELS[backend]} | {check['max_rel_diff']:.2e} | {'yes' if check['pass'] else 'NO'} "
                f"| {rates['one_device']:.0f} | {rates['devices']:.0f} | {check['scaling_efficiency']:.0%} |"
            )
    lines += ["", "Test split:", "| metric | torch | jax |", "|---|---|---|"]
    torch_m, jax_m = report["test_metrics"]["torch"], report["test_metrics"]["jax"]
    for name in torch_m:
        lines.append(f"| {name} | {torch_m[name]:.4f} | {jax_m[name]:.4f} |")
    lines += [
        "",
        "Speed:" if "devices" not in report else f"Speed ({report['devices']} devices each):",
        "| backend | warm-up / compile | steady epoch | steps/s | samples/s | epoch + validation "
        "| compilations | peak memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend, s in report["speed"].items():
        memory = f"{s['peak_memory_bytes'] / 2**20:.0f} MiB ({s['peak_memory_kind']})"
        compilations = s["compilations"] if s["compilations"] is not None else "n/a"
        lines.append(
            f"| {LABELS[backend]} | {s['warmup_s']:.2f} s | {s['steady_epoch_s']:.2f} s "
            f"| {s['steps_per_s']:.1f} | {s['samples_per_s']:.0f} | {s['epoch_with_validation_s']:.2f} s "
            f"| {compilations} | {memory} |"
        )
    lines += ["", "Verdict: " + report["verdict"]]
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    """Writes ``FILES`` into ``out``, replacing it as a whole and only once all are written: an
    interruption (Ctrl-C, a crash) leaves the previous report, never half of a new one."""
    with staged_directory(out, overwrite=True) as staging:
        atomic_write_text(staging / "results.json", json.dumps(report, indent=1) + "\n")
        atomic_write_text(staging / "report.md", _markdown(report))
        atomic_write_bytes(staging / "loss_curves.png", _png(_loss_curves(report)))
        losses = report["parity"]["steps"]["losses"]
        figure = drift_figure(losses["torch"], losses["jax"], losses[FLOOR_RUN], names=("torch", "jax"))
        atomic_write_bytes(staging / "drift.png", _png(figure))
        atomic_write_bytes(staging / "speed.png", _png(_speed_bars(report)))


def _markdown(report: dict) -> str:
    env, dataset = report["environment"], report["dataset"]
    lines = [
        f"# ml-patterns compare: {report['settings']['model']} model, {report['settings']['epochs']} epochs",
        "",
        f"- data: {dataset['source']} ({dataset['path']}), splits {dataset['splits']}; sequences truncated to "
        f"{dataset['max_length']} tokens: {dataset['truncated_molecules']} molecules",
        f"- machine: {env['platform']}, {env['processor']}, {env['cpus_available']} CPUs available",
    ]
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
    names = [LABELS[b] for b in BACKENDS]
    colors = ["#ee4c2c", "#4285f4"]
    axes[0].bar(names, [report["speed"][b]["samples_per_s"] for b in BACKENDS], color=colors)
    axes[0].set_ylabel("samples/s (steady state, higher is better)")
    axes[1].bar(names, [report["speed"][b]["warmup_s"] for b in BACKENDS], color=colors)
    axes[1].set_ylabel("warm-up / compile time, s")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    verdict = report["verdict"]
    figure.suptitle(verdict[:90] + ("..." if len(verdict) > 90 else ""), fontsize=8)
    return figure
