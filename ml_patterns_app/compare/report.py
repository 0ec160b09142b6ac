"""``ml-patterns compare``'s verdict: the two runs' losses, step by step and epoch by epoch, judged
against the float32 noise measured by torch's own reruns (from the initial weights one ulp off, and
in float64; ``ml_patterns.verdict``), the test metrics and the speed side by side, written as
``results.json``, ``report.md`` and three plots (``written``). The speed side is ``speed``'s, the text
of ``report.md`` ``summary``'s."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ml_patterns import parity, verdict
from ml_patterns.machine import environment
from ml_patterns.parity import Tolerance
from ml_patterns.precision import MIXED
from ml_patterns.ulps import INITIAL_ULPS
from ml_patterns_app.compare.precision_runs import loss_minimum, precision_section, run_precision
from ml_patterns_app.compare.settings import LABELS, REFERENCE, CompareSettings, WorkerResult
from ml_patterns_app.compare.speed import run_speed, timing_reliability
from ml_patterns_app.compare.summary import share_text, warmup_text

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
        "(one float32 ulp in every precision: ml_patterns.ulps.INITIAL_ULPS) and one float32 ulp after every step "
        "(each rerun its own signs): floor = running max of their largest relative loss difference, at least the "
        "float32 single-call loss tolerance, in bf16-mixed half a bfloat16 eps of the loss "
        "(precision_runs.MIXED_LOSS_MINIMUM); torch in float64 (no autocast): the anchor each side's loss "
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
    speed = {name: run_speed(result, torch_r.flops_per_step, torch_r.flops_counter) for name, result in results.items()}
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
    # In bf16-mixed the final metrics are reported, not judged: the reruns (one float32 ulp off) are not
    # calibrated for them, and bfloat16 evaluation alone moves a metric further than they spread
    # (docs/PRECISION.md).
    judged = metrics is not None and noise.get("precision") != MIXED
    names = [name for name in metrics["torch"] if name in metrics["jax"]] if judged else []
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


# Fewer train steps than this, with compiling longer than the steady-state training: too small to rank.
SMALL_RUN_STEPS = 50


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
        rate_one, rate_many = run_speed(one)["samples_per_s"], run_speed(many)["samples_per_s"]
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
            f"{LABELS[b]}: {share_text(reliability[b]['others_cpu_share'])} of the CPUs used by other processes, "
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
        f"rate ({compiled['steps_per_s']:.1f} steps/s) after {warmup_text(compiled['warmup_s'])} of compiling "
        "and warm-up."
    )
