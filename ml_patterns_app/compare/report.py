"""``ml-patterns compare``'s verdict: the two runs' losses, step by step and epoch by epoch, judged
against the float32 noise measured by torch's own reruns (from the initial weights one ulp off, and
in float64; ``ml_patterns.verdict``), the test metrics and the speed side by side, written as
``results.json``, ``report.md`` and three plots (``written``)."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import numpy as np

from ml_patterns import parity, verdict
from ml_patterns.machine import environment
from ml_patterns.molecules.metrics import BASELINE
from ml_patterns.parity import Tolerance
from ml_patterns.ulps import INITIAL_ULPS
from ml_patterns_app.compare.precision_runs import (
    ensemble_moves,
    format_precision_section,
    loss_minimum,
    precision_section,
    run_precision,
)
from ml_patterns_app.compare.settings import LABELS, REFERENCE, CompareSettings, WorkerResult

AGREE = "they agree numerically"
DISAGREE = "they DISAGREE (see the parity table and drift.png)"


def build_report(
    settings: CompareSettings,
    manifest: dict,
    results: dict[str, WorkerResult],
    ensemble: list[WorkerResult],
    anchor: WorkerResult,
    data_dir: Path | None,
    dataset: dict | None = None,
    float32: dict[str, WorkerResult] | None = None,
) -> dict:
    """``results``: each backend's worker result (``worker.run_worker``; ``"torch_compile"`` too when
    torch.compile ran); ``ensemble``: the reference rerun from its initial weights one ulp off,
    ``settings.floor_runs`` times; ``anchor``: the reference in float64. The verdict is
    ``ml_patterns.verdict.judge``'s, on every step's loss and on each epoch's train and val loss.
    ``dataset``: the report's data section for a workload other than the molecules (``manifest``
    and ``data_dir`` then unused); ``float32``: in bf16-mixed, each backend's float32 run (the report's
    ``bf16_vs_float32`` section, ``precision_runs``)."""
    runs = {**results, **{f"one ulp off {k}": run for k, run in enumerate(ensemble)}, "float64": anchor}
    kinds = {name: r.device["kind"] for name, r in runs.items()}
    if len(set(kinds.values())) != 1:  # the parent resolves one kind for all (runner.resolve_device)
        raise ValueError(f"the runs compared ran on different kinds of device: {kinds}")
    device_kind = next(iter(kinds.values()))
    minimum = loss_minimum(settings.precision, device_kind)
    torch_r, jax_r = results[REFERENCE], results["jax"]
    noise = {
        "multiple": verdict.FLOOR_MULTIPLE,
        "accuracy_factor": verdict.ACCURACY_FACTOR,
        "spread_multiple": verdict.SPREAD_MULTIPLE,
        "chaos_level": verdict.CHAOS_LEVEL,
        "runs": settings.floor_runs,
        "precision": settings.precision,
        "initial_ulps": INITIAL_ULPS[settings.precision],
        "minimum": {"rtol": minimum.rtol, "atol": minimum.atol},
        "how": "torch rerun in the compared precision with every weight moved at random before the first step "
        "(initial_ulps float32 ulps: one bfloat16 ulp in bf16-mixed) and one float32 ulp after every step "
        "(each rerun its own signs): floor = running max of their largest relative loss difference, at least the "
        "single-call loss tolerance of the precision; torch in float64 (no autocast): the anchor each side's loss "
        "error and weight-norm error are measured against; the horizon: where the reruns' own spread exceeds the "
        "chaos level (ml_patterns.verdict)",
    }
    losses = {
        "torch": torch_r.step_losses,
        "jax": jax_r.step_losses,
        "ensemble": [run.step_losses for run in ensemble],
        "float64": anchor.step_losses,
        # each epoch's global weight norm, the verdict's norm test (ml_patterns.verdict)
        "weight_norms": {
            "reference": torch_r.weight_norms,
            "other": jax_r.weight_norms,
            "ensemble": [run.weight_norms for run in ensemble],
            "anchor": anchor.weight_norms,
        },
    }
    metrics = {"torch": torch_r.test_metrics, "jax": jax_r.test_metrics}
    ensemble_metrics = [run.test_metrics for run in ensemble]
    steps = _verdict_fields(judge_steps(losses, noise, metrics, ensemble_metrics))
    passed = steps["outcome"] != verdict.DISAGREE
    compiled = None
    if "torch_compile" in results:  # torch.compile against eager torch, on the same noise
        compiled = _verdict_fields(judge_steps({**losses, "jax": results["torch_compile"].step_losses}, noise))
        passed &= compiled["outcome"] != verdict.DISAGREE
    rows = [{"epoch": epoch} for epoch in range(len(torch_r.history["epoch"]))]
    for key in ("train_loss", "val_loss"):
        if key not in torch_r.history:
            continue  # no validation batches (your pair without --val)
        history = {
            "torch": torch_r.history[key],
            "jax": jax_r.history[key],
            "ensemble": [run.history[key] for run in ensemble],
            "float64": anchor.history[key],
        }
        judged = judge_steps(history, noise)
        passed &= judged.passed
        for epoch, row in enumerate(rows):
            row[key] = {
                "torch": history["torch"][epoch],
                "jax": history["jax"][epoch],
                "torch_one_ulp": [values[epoch] for values in history["ensemble"]],
                "torch_float64": history["float64"][epoch],
                "rel_diff": float(judged.drift[epoch]),
                "floor": float(judged.floor[epoch]),
                "pass": judged.passed,
                "decided": judged.decided,
            }
    speed = {name: _speed(result, torch_r.flops_per_step) for name, result in results.items()}
    if dataset is None:
        dataset = {
            "path": str(data_dir),
            "source": manifest["source"]["name"],
            "splits": manifest["splits"],
            "max_length": torch_r.max_length,
            "truncated_molecules": torch_r.truncated,
        }
    parity_ = {"passed": passed, "steps": {**steps, "losses": losses}, "epochs": rows}
    if compiled is not None:
        parity_["torch_compile"] = {**compiled, "losses": results["torch_compile"].step_losses}
    return {
        "settings": dataclasses.asdict(settings),
        "dataset": dataset,
        "device_kind": device_kind,
        "noise_floor": noise,
        "parity": parity_,
        "test_metrics": {**metrics, "torch_one_ulp": ensemble_metrics},
        "speed": speed,
        "backends": {
            name: {
                **{k: getattr(result, k) for k in ("device", "versions", "threads")},
                "precision": run_precision(settings.precision, result.precision),
            }
            for name, result in results.items()
        },
        "environment": environment(),
        "timing": timing_reliability(results),
        "verdict": _verdict(speed, _agreement(passed, steps), results, timing_reliability(results)),
        "bf16_vs_float32": None if not float32 else precision_section(results, float32, losses_drift(losses)),
    }


def losses_drift(losses: dict) -> np.ndarray:
    """The two backends' relative step distance, |jax - torch| / |torch| ``[T]``."""
    return verdict.relative_distance(losses["jax"], losses["torch"])


def judge_steps(losses: dict, noise: dict, metrics: dict | None = None, ensemble_metrics=()) -> verdict.Verdict:
    """``ml_patterns.verdict.judge`` on ``losses`` (``{"torch", "jax": [T], "ensemble": [K][T],
    "float64": [T]}``, and ``"weight_norms"``: judge's ``norms``, where measured) with the report's
    ``noise_floor`` settings; ``metrics`` (``{"torch", "jax":
    {name: value}}``) and ``ensemble_metrics`` (``[{name: value}]``): the final test metrics, judged
    after a horizon. Also what ``drift.png`` draws, from ``results.json`` alone."""
    names = [] if metrics is None else [name for name in metrics["torch"] if name in metrics["jax"]]
    final = {
        name: (metrics["torch"][name], metrics["jax"][name], [m[name] for m in ensemble_metrics]) for name in names
    }  # noqa: E501
    return verdict.judge(
        losses["torch"],
        losses["jax"],
        losses["ensemble"],
        losses["float64"],
        norms=losses.get("weight_norms"),
        runs=noise["runs"],
        minimum=Tolerance(**noise["minimum"]),
        metrics=final,
    )


def _verdict_fields(judged: verdict.Verdict) -> dict:
    """The verdict on every step, as ``results.json`` keeps it."""
    ratio = judged.worst_floor_ratio
    return {
        "count": judged.steps,
        "outcome": judged.outcome,
        "decided": judged.decided,
        "reason": judged.reason,
        "summary": judged.summary(),
        "horizon": judged.horizon,
        "worst_ratio": None if np.isnan(ratio) else ratio,
        "worst_step": judged.worst_floor_step,
        "worst_accuracy_ratio": None if np.isnan(judged.worst_accuracy_ratio) else judged.worst_accuracy_ratio,
        "worst_norm_ratio": None if np.isnan(judged.worst_norm_ratio) else judged.worst_norm_ratio,
        "first_outside": judged.first_outside,
        "final_drift": float(judged.drift[-1]) if judged.steps else None,
        "final_floor": float(judged.floor[-1]) if judged.steps else None,
    }


# Timing is not reliable when, during a worker, other processes used more than this share of all
# CPUs, or when the 1-minute load average before it exceeded this many per CPU (bench's rule).
BUSY_CPU_SHARE = 0.15
BUSY_LOAD_PER_CPU = 0.5
# Fewer train steps than this, with compiling longer than the steady-state training: too small to rank.
SMALL_RUN_STEPS = 50


def steady_state(epoch_times: list[dict], epoch_compilations: list) -> dict:
    """The steady state from each epoch's training time (``train_s``, ended by the epoch's one host
    sync: steps are never waited for one by one, so a GPU is timed at its throughput, not at the
    host's latency per step).

    An epoch is at steady state when it is not the first (torch's allocator and kernels warm up;
    JAX compiles) and compiled nothing new (``epoch_compilations``: programs compiled by each
    epoch's end, None where the backend compiles nothing). Every epoch holds the same batches in
    another order, so their times compare. Returns ``{"epochs": the steady epochs, "epoch_s":
    their times, "measured": bool}``; ``measured`` is False when no epoch qualifies (one epoch, or
    each compiled something).
    """
    compiled = list(epoch_compilations) + [None] * (len(epoch_times) - len(epoch_compilations))
    steady = [e for e in range(1, len(epoch_times)) if compiled[e] is None or compiled[e] == compiled[e - 1]]
    return {"epochs": steady, "epoch_s": [epoch_times[e]["train_s"] for e in steady], "measured": bool(steady)}


def _difference(a: float, b: float, tolerance) -> dict:
    diff = abs(a - b)
    return {
        "abs_diff": diff,
        "rel_diff": diff / max(abs(a), 1e-30),
        "pass": diff <= tolerance.atol + tolerance.rtol * abs(a),
    }


def add_one_device_parity(report: dict, runs: dict[str, tuple[WorkerResult, WorkerResult]]) -> None:
    """``--devices N``: ``runs`` is each backend's ``(one-device result, N-device result)``. Checks every
    epoch of the N-device history against the one-device one (the same tolerance), adds the
    scaling, and folds the outcome into ``report["parity"]["passed"]`` and the verdict."""
    tolerance = parity.tolerance("history", report["device_kind"])
    checks = {}
    for backend, (one, many) in runs.items():
        cells = [
            _difference(a, b, tolerance)
            for key in ("train_loss", "val_loss")
            for a, b in zip(one.history[key], many.history[key], strict=True)
        ]
        rate_one, rate_many = _speed(one)["samples_per_s"], _speed(many)["samples_per_s"]
        checks[backend] = {
            "max_rel_diff": max(cell["rel_diff"] for cell in cells),
            "pass": all(cell["pass"] for cell in cells),
            "samples_per_s": {"one_device": rate_one, "devices": rate_many},
            "scaling_efficiency": None if None in (rate_one, rate_many) else rate_many / (many.devices * rate_one),
        }
    devices = next(iter(runs.values()))[1].devices
    agree = all(check["pass"] for check in checks.values())
    report["devices"] = devices
    report["against_one_device"] = checks
    report["parity"]["passed"] = report["parity"]["passed"] and agree
    report["verdict"] += f" On {devices} devices each (torch DDP, JAX sharded), both train " + (
        "as on one device." if agree else "DIFFERENTLY from one device (see the table)."
    )


def _speed(result: WorkerResult, flops_per_step: float | None = None) -> dict:
    """Steady state, warm-up, rates and peak memory; ``flops_per_step``: one training step's FLOPs
    (torch's count, the same model on every side), for the FLOP rate at steady state."""
    steady = steady_state(result.epoch_times, result.epoch_compilations)
    first_epoch = result.epoch_times[0]["train_s"]
    steps, samples = result.steps_per_epoch, result.samples_per_epoch
    speed = {
        "first_epoch_s": first_epoch,
        "steady_epochs": steady["epochs"],
        "train_steps": steps * len(result.epoch_times),
        "epochs": len(result.epoch_times),
        "compilations": result.compilations,
        "compile_cache": result.compile_cache or None,
        "padding_utilization": result.padding,
        "machine_load": {**result.machine_load, "load_average_during": result.load_during},
        "peak_memory_bytes": result.peak_memory_bytes,
        "peak_memory_kind": result.peak_memory_kind,
        "flops_per_step": flops_per_step,
    }
    if not steady["measured"]:
        return {
            **speed,
            "steady_epoch_s": None,
            "warmup_s": None,
            "steps_per_s": None,
            "samples_per_s": None,
            "gflop_per_s": None,
        }
    epoch = statistics.median(steady["epoch_s"])
    return {
        **speed,
        "steady_epoch_s": epoch,
        # The first epoch's time beyond a steady one: jax.jit's compilations (one per batch shape),
        # torch's warm-up. Negative when the machine got busier later: kept as is.
        "warmup_s": first_epoch - epoch,
        "steps_per_s": steps / epoch,
        "samples_per_s": samples / epoch,
        # No MFU: that needs the device's peak, which bench measures (ml-patterns bench), not compare.
        "gflop_per_s": None if flops_per_step is None else flops_per_step * steps / epoch / 1e9,
    }


def timing_reliability(results: dict[str, WorkerResult]) -> dict:
    """Per backend, whether other processes competed for the CPUs while its worker ran."""
    verdicts = {}
    for backend, result in results.items():
        load = result.machine_load
        cpus = result.cpus.get("cpus_available") or 1
        share = load.get("others_cpu_share")
        before = (load.get("load_average_before") or [0.0])[0]
        # The CPU time other processes took during the worker is the direct measure. The load average
        # before it is only the fallback where that share cannot be read: it decays over minutes, so
        # right after a previous run (a second compare, the other backend's worker) it stays high
        # while nothing competes.
        busy = share > BUSY_CPU_SHARE if share is not None else before > BUSY_LOAD_PER_CPU * cpus
        verdicts[backend] = {"busy": busy, "others_cpu_share": share, "load_average_before": before}
    return verdicts


def _agreement(passed: bool, steps: dict) -> str:
    """The numerical half of the verdict: the outcome, and the test that decided it over every step."""
    if not passed:
        return DISAGREE
    chaotic = (
        "" if steps["horizon"] is None else f"; chaotic from step {steps['horizon']}, judged on distributions after it"
    )
    return f"{AGREE} (decided by the {steps['decided']}{chaotic})"


def _verdict(speed: dict, agreement: str, results: dict, reliability: dict) -> str:
    busy = [backend for backend in reliability if reliability[backend]["busy"]]
    caveat = ""
    if busy:
        shares = ", ".join(
            f"{LABELS[b]}: {_share(reliability[b]['others_cpu_share'])} of the CPUs used by other processes, "
            f"load average {reliability[b]['load_average_before']:.1f} before"
            for b in reliability
        )
        caveat = (
            f"TIMING NOT RELIABLE: the machine was busy ({shares}); the speed figures may be off by large "
            "factors, rerun on a quiet machine (--threads 1 suffers least from a busy one). "
        )
    jax = speed["jax"]
    steps = jax["train_steps"]
    steady_training = None if jax["steady_epoch_s"] is None else jax["steady_epoch_s"] * jax["epochs"]
    compiling_dominates = steady_training is None or (jax["warmup_s"] or 0.0) > steady_training
    compiling = "" if jax["warmup_s"] is None else f"{jax['warmup_s']:.1f} s compiling"
    training = "" if steady_training is None else f"{steady_training:.1f} s of steady-state training"
    if compiling_dominates and (steady_training is None or steps < SMALL_RUN_STEPS):
        spent = f" ({compiling} against {training})" if compiling and training else ""
        return (
            f"{caveat}This run is too small to rank the frameworks: {steps} train steps, and JAX's compiling "
            f"dominates{spent}, so no steady-state comparison is given (train on more molecules or for more "
            f"epochs); {agreement}."
        )
    torch_rate, jax_rate = speed["torch"]["steps_per_s"], jax["steps_per_s"]
    faster, slower = ("jax", "torch") if jax_rate > torch_rate else ("torch", "jax")
    ratio = max(torch_rate, jax_rate) / min(torch_rate, jax_rate)
    device = results["torch"].device["name"]
    verdict = (
        f"{caveat}On this machine ({device}), {LABELS[faster]} trains this model {ratio:.2f}x faster than "
        f"{LABELS[slower]} at steady state ({speed[faster]['steps_per_s']:.1f} vs "
        f"{speed[slower]['steps_per_s']:.1f} steps/s), and {agreement}."
    )
    if compiling_dominates:
        verdict += (
            f" Over this run as a whole JAX's {compiling} outweighed its {training} (a second run loads the "
            "compiled programs from the compile cache)."
        )
    return verdict + _compiled_verdict(speed)


def _compiled_verdict(speed: dict) -> str:
    """torch.compile's place, when it ran: its steady rate against eager torch's, its compile time."""
    compiled, eager = speed.get("torch_compile"), speed["torch"]
    if compiled is None or None in (compiled["steps_per_s"], eager["steps_per_s"]):
        return ""
    return (
        f" {LABELS['torch_compile']}: {compiled['steps_per_s'] / eager['steps_per_s']:.2f}x eager torch's steady "
        f"rate ({compiled['steps_per_s']:.1f} steps/s) after {_warmup(compiled['warmup_s'])} of compiling and warm-up."
    )


def _share(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.0%}"


def _number(value: float | None, spec: str, unit: str = "") -> str:
    return "not measured" if value is None else f"{value:{spec}}{unit}"


def _warmup(seconds: float | None) -> str:
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
        f"{_number(compiled['worst_ratio'], '.3g')} (step {compiled['worst_step']})"
    ]


def format_summary(report: dict) -> str:
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
        f"- largest drift/floor {_number(steps['worst_ratio'], '.3g')} (step {steps['worst_step']}), largest "
        f"float64 error / torch's {_number(steps['worst_accuracy_ratio'], '.3g')}, weight norm's "
        f"{_number(steps.get('worst_norm_ratio'), '.3g')}; first step outside: {first}"
        f"{horizon}; at the last step drift {_number(steps['final_drift'], '.2e')}, floor "
        f"{_number(steps['final_floor'], '.2e')}",
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
                f"| {_number(rates['one_device'], '.0f')} | {_number(rates['devices'], '.0f')} "
                f"| {_number(check['scaling_efficiency'], '.0%')} |"
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
            f"| {LABELS[backend]} | {s['first_epoch_s']:.2f} s | {_warmup(s['warmup_s'])} "
            f"| {_number(s['steady_epoch_s'], '.2f', ' s')} | {_number(s['steps_per_s'], '.1f')} "
            f"| {_number(s['samples_per_s'], '.0f')} | {compilations} | {padded} "
            f"| {_number(s.get('gflop_per_s'), '.3g')} "
            f"| {_share(report['timing'][backend]['others_cpu_share'])} | {memory} |"
        )
    flops = next(iter(report["speed"].values())).get("flops_per_step")
    if flops:
        lines.append(
            f"GFLOP/s: one training step's forward and backward FLOPs ({flops / 1e9:.3g} GFLOP, counted by torch's "
            "FlopCounterMode on the first batch) x steady steps/s; MFU needs the device's peak: `ml-patterns bench`."
        )
    lines += [*format_precision_section(report.get("bf16_vs_float32")), "", "Verdict: " + report["verdict"]]
    return "\n".join(lines)
