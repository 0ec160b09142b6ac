"""The text of ``ml-patterns compare``'s report (``report.md``, and what the command prints), from the
report ``report.build_report`` makes."""

from __future__ import annotations

from ml_patterns.molecules.metrics import BASELINE
from ml_patterns_app.compare.precision_runs import ensemble_moves, format_precision_section
from ml_patterns_app.compare.settings import LABELS


def share_text(value: float | None) -> str:
    """A share of the CPUs, as a percentage, or ``unknown``."""
    return "unknown" if value is None else f"{value:.0%}"


def number_text(value: float | None, spec: str, unit: str = "") -> str:
    """``value`` formatted by ``spec`` with ``unit``, or ``not measured``."""
    return "not measured" if value is None else f"{value:{spec}}{unit}"


def warmup_text(seconds: float | None) -> str:
    """The first epoch's time beyond a steady one, or ``not measured``; a negative one said as such."""
    if seconds is None:
        return "not measured"
    if seconds < 0:  # never shown as a clamped 0: the load changed between the first epoch and the rest
        return f"{seconds:.2f} s (first epoch faster than steady state: the load changed)"
    return f"{seconds:.2f} s"


def _compiled_summary(compiled: dict | None) -> list[str]:
    if compiled is None:
        return []
    return [
        f"- torch.compile against eager torch, every step: {compiled['summary']}; largest drift/floor "
        f"{number_text(compiled['worst_ratio'], '.3g')} (step {compiled['worst_step']})"
    ]


def format_summary(report: dict) -> str:
    """``report.md``'s text (and what the command prints) from ``report.build_report``'s report."""
    noise, steps = report["noise_floor"], report["parity"]["steps"]
    first = "none" if steps["first_outside"] is None else f"step {steps['first_outside']}"
    horizon = "" if steps["horizon"] is None else f"; chaotic from step {steps['horizon']}"
    lines = [
        f"Parity against the {noise.get('precision', 'float32')} noise ({noise['runs']} torch reruns "
        f"{ensemble_moves(noise)}: the ensemble "
        f"floor; torch in float64: the anchor; agreement: drift <= {noise['multiple']:g}x floor, or an error "
        f"against float64 <= {noise['accuracy_factor']:g}x torch's; and the weight norm's error against float64 "
        f"<= {noise['accuracy_factor']:g}x torch's; ml_patterns.verdict):",
        f"- every step ({steps['count']}): {steps['summary']}",
        f"- largest drift/floor {number_text(steps['worst_ratio'], '.3g')} (step {steps['worst_step']}), largest "
        f"float64 error / torch's {number_text(steps['worst_accuracy_ratio'], '.3g')}, weight norm's "
        f"{number_text(steps.get('worst_norm_ratio'), '.3g')}; first step outside: {first}"
        f"{horizon}; at the last step drift {number_text(steps['final_drift'], '.2e')}, floor "
        f"{number_text(steps['final_floor'], '.2e')}",
        *_compiled_summary(report["parity"].get("torch_compile")),
        "| epoch | loss | torch | jax | torch, one ulp off (range) | torch, float64 | rel diff | floor | pass |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["parity"]["epochs"]:
        for key in ("train_loss", "val_loss"):
            if key not in row:
                continue
            cell = row[key]
            reruns = cell["torch_one_ulp"]
            lines.append(
                f"| {row['epoch']} | {key} | {cell['torch']:.6f} | {cell['jax']:.6f} "
                f"| {min(reruns):.6f} - {max(reruns):.6f} | {cell['torch_float64']:.6f} "
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
                f"| {number_text(rates['one_device'], '.0f')} | {number_text(rates['devices'], '.0f')} "
                f"| {number_text(check['scaling_efficiency'], '.0%')} |"
            )
    devices = report["backends"]
    lines += ["", "Devices: " + "; ".join(f"{LABELS[b]} on {devices[b]['device']['name']}" for b in devices)]
    torch_m, jax_m = report["test_metrics"]["torch"], report["test_metrics"]["jax"]
    if torch_m:  # your own pair has none
        lines += [
            "",
            "Test split (baseline, from the training split: the mean predictor, or the majority class):",
            "| metric | torch | jax | torch, one ulp off (range) | baseline |",
            "|---|---|---|---|---|",
        ]
    for name in (name for name in torch_m if not name.startswith(BASELINE)):
        reruns = [m[name] for m in report["test_metrics"]["torch_one_ulp"]]
        baseline = torch_m.get(BASELINE + name)  # none for the token accuracies
        lines.append(
            f"| {name} | {torch_m[name]:.4f} | {jax_m[name]:.4f} | {min(reruns):.4f} - {max(reruns):.4f} "
            f"| {'' if baseline is None else f'{baseline:.4f}'} |"
        )
    lines += [
        "",
        "Speed (steady state: the median epoch after the first among those that compiled nothing, each "
        "epoch timed to its one host sync"
        + ("" if "devices" not in report else f"; {report['devices']} devices each")
        + "):",
        "| backend | first epoch | warm-up / compile | steady epoch | steps/s | samples/s | compilations "
        "| real tokens / attention | GFLOP/s | others' CPU share | peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, s in report["speed"].items():
        memory = f"{s['peak_memory_bytes'] / 2**20:.0f} MiB ({s['peak_memory_kind']})"
        compilations = s["compilations"] if s["compilations"] is not None else "n/a"
        padding = s["padding_utilization"]
        padded = "n/a" if not padding else f"{padding['token']:.1%} / {padding['attention']:.1%}"
        lines.append(
            f"| {LABELS[backend]} | {s['first_epoch_s']:.2f} s | {warmup_text(s['warmup_s'])} "
            f"| {number_text(s['steady_epoch_s'], '.2f', ' s')} | {number_text(s['steps_per_s'], '.1f')} "
            f"| {number_text(s['samples_per_s'], '.0f')} | {compilations} | {padded} "
            f"| {number_text(s.get('gflop_per_s'), '.3g')} "
            f"| {share_text(report['timing'][backend]['others_cpu_share'])} | {memory} |"
        )
    first = next(iter(report["speed"].values()))
    if first.get("flops_per_step"):
        lines.append(
            f"GFLOP/s: one training step's forward and backward FLOPs ({first['flops_per_step'] / 1e9:.3g} GFLOP, "
            f"counted by {first['flops_counter']} on the first batch, the same count on every side) x steady "
            "steps/s; MFU needs the device's peak: `ml-patterns bench`."
        )
    lines += [*format_precision_section(report.get("bf16_vs_float32")), "", "Verdict: " + report["verdict"]]
    return "\n".join(lines)
