"""The error rates of ``ml-patterns compare``'s verdict (``ml_patterns.verdict``), measured over a
matrix of correct runs and injected bugs rather than on one sample.

    python -m ml_patterns_bench.calibrate_verdict --data data/nci --out verdict-calibration [--family I ...]
        [--precision bf16-mixed] [--initial-ulps N ...] [--loss-minimum RTOL] [--rejudge]

Everything runs in this process, one thread: the compare workload (the molecule models at
``CompareSettings``' defaults, the same Trainers, batches, batch preparation and initial weights as
compare's workers: ``verdict_runs``), every run in ``--precision`` but the float64 anchor. Each
*family* (a model, a seed, a length) trains the reference (torch: fused AdamW, SDPA attention, one
thread), its ensemble as compare's runner makes it (``--runs`` reruns, the k-th from the initial
weights ``--initial-ulps`` float32 ulps off and one more ulp after every step, signs from seed + k:
``torch_impl.runtime.rounding_noise``; one ensemble per ``--initial-ulps`` given, so that candidates
are judged on the same runs) and its float64 anchor (``torch_impl.state.float64_twin``, no autocast),
then the runs judged against them:

- correct: JAX; torch with foreach instead of fused AdamW; torch with the written-out attention
  instead of SDPA; torch on 2 threads. Each must agree: a DISAGREE is a false alarm.
- bugs, injected in the JAX side: the learning rate x1.5; Adam's epsilon inside the square root
  (optax's ``eps_root``); optax's own float32 Adam bias correction; weight decay 1% off; GELU's tanh
  form for the exact one; LayerNorm's epsilon 1e-6 (flax's default) for 1e-5. Each must disagree.
- informational: JAX with optax's stock AdamW decay (one rounding where torch has two), the form
  ``jax_impl.optim.decay_then_step`` replaced.

Each family's file (``family-*.json``: every run's per-step losses, the settings, the machine) is
written when the family ends; then every family file in ``--out`` is judged at the current constants
with a ``Candidate`` (the first ``--initial-ulps``' ensemble, and the floor's minimum: compare's for
the precision unless ``--loss-minimum`` gives another) and the table written (``--table``,
``calibration.md``: per run the worst drift / ensemble floor and float64 error / the reference's
before any horizon, the horizon, the verdict and the test that decided; the error rates and
margins). Families run by parallel processes (``--family``) end in one table; ``--rejudge`` judges
the kept runs again without training (after a change of the constants, or with another candidate).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from ml_patterns import verdict
from ml_patterns.molecules.prepare import prepare_dataset
from ml_patterns.parity import Tolerance
from ml_patterns.precision import MIXED
from ml_patterns.ulps import BF16_ULPS, INITIAL_ULPS
from ml_patterns_app.compare.precision_runs import loss_minimum
from ml_patterns_app.compare.settings import CompareSettings
from ml_patterns_bench.verdict_runs import (
    BUGS,
    CORRECT,
    INFORMATIONAL,
    MILD_BUGS,
    Workload,
    jax_losses,
    torch_losses,
)


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    settings: CompareSettings
    bugs: tuple[str, ...] = ()  # injected in this family's JAX side
    threads: bool = False  # run torch on 2 threads too (slow on a loaded machine: OpenMP waits at barriers)


FAMILIES = (
    # The bugs at 1 epoch (63 steps) and at compare's default length (189 steps).
    Family("multitask, seed 0, 1 epoch", CompareSettings(epochs=1), BUGS + INFORMATIONAL),
    Family("multitask, seed 0", CompareSettings(), BUGS, threads=True),
    Family("multitask, seed 1", CompareSettings(seed=1), threads=True),
    Family("multitask, seed 2", CompareSettings(seed=2)),
    Family("autoencoder, seed 0", CompareSettings(model="autoencoder"), threads=True),
    # The long runs: compare --epochs 5 --batch-size 32 (625 steps), both models.
    Family("multitask, seed 0, 5 epochs, batch 32", CompareSettings(epochs=5, batch_size=32), MILD_BUGS, True),
    Family(
        "autoencoder, seed 1, 5 epochs, batch 32", CompareSettings(model="autoencoder", seed=1, epochs=5, batch_size=32)
    ),
    # More 1-epoch families, for a precision whose matrix must stay short (bf16-mixed on a CPU).
    Family("multitask, seed 1, 1 epoch", CompareSettings(seed=1, epochs=1), BUGS, threads=True),
    Family("autoencoder, seed 0, 1 epoch", CompareSettings(model="autoencoder", epochs=1), BUGS),
)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """How the verdict measures the noise: the ensemble whose reruns start ``initial_ulps`` float32
    ulps off (each then one ulp a step), and the floor's ``minimum`` (``verdict.judge``'s)."""

    initial_ulps: int
    minimum: Tolerance

    def describe(self) -> str:
        start = f"{self.initial_ulps} float32 ulps" + (" (one bfloat16 ulp)" if self.initial_ulps == BF16_ULPS else "")
        return (
            f"K reruns {start} off at the start and one ulp a step, "
            f"loss minimum rtol {self.minimum.rtol:.3g} atol {self.minimum.atol:.3g}"
        )


def ensemble_key(k: int, initial_ulps: int) -> str:
    """The k-th rerun's name in a family's file (``"ensemble k"`` for one ulp, as the float32 files have)."""
    return f"ensemble {k}" if initial_ulps == 1 else f"ensemble {k}, {initial_ulps} ulps off"


def run_family(family: Family, data: Path, runs: int, ensembles: list[int], log, only: list[str] | None) -> dict:
    """Trains the family's reference, an ensemble per initial move in ``ensembles`` (float32 ulps),
    the anchor and the judged runs (judged as they end, with the first ensemble): ``{run: (losses, norms)}``."""
    work = Workload(data, family.settings)
    started = time.perf_counter()
    seed = family.settings.seed
    trained = {"reference": torch_losses(work, work.weights)}
    for ulps in ensembles:  # as compare's runner: the initial weights moved, then one ulp a step
        for k in range(runs):
            moved = work.moved_weights(seed + k, ulps)
            trained[ensemble_key(k, ulps)] = torch_losses(work, moved, rounding_seed=seed + k)
    trained["float64"] = torch_losses(work, work.weights, "float64")
    log(f"{family.name}: reference, {runs} reruns x {len(ensembles)}, float64 in {time.perf_counter() - started:.0f} s")
    others = {
        "jax": lambda: jax_losses(work),
        "torch foreach AdamW": lambda: torch_losses(work, work.weights, "foreach"),
        "torch written-out attention": lambda: torch_losses(work, work.weights, "written-out"),
        **({"torch 2 threads": lambda: torch_losses(work, work.weights, "2 threads")} if family.threads else {}),
        **{bug: (lambda bug=bug: jax_losses(work, bug)) for bug in family.bugs},
    }
    candidate = Candidate(ensembles[0], loss_minimum(family.settings.precision, "cpu"))
    for name, run in others.items():
        if only and name not in only:
            continue
        began = time.perf_counter()
        trained[name] = run()
        row = judge_run(family.name, name, trained, candidate)
        log(f"  {name}: floor ratio {row['worst_floor_ratio']:.3g}, accuracy {row['worst_accuracy_ratio']:.3g}, "
            f"norm {row['worst_norm_ratio']:.3g}, {row['outcome']} ({time.perf_counter() - began:.0f} s)")  # fmt: skip
    return {name: {"losses": losses.tolist(), "norms": norms.tolist()} for name, (losses, norms) in trained.items()}


def judge_run(family: str, name: str, trained: dict, candidate: Candidate) -> dict:
    """One judged run's row: the verdict at the current constants, with ``candidate``'s ensemble and
    minimum, on ``trained[name]`` (losses, norms)."""
    losses = {key: np.asarray(value[0]) for key, value in trained.items()}
    norms = {key: np.asarray(value[1]) for key, value in trained.items()}
    ensemble = [key for k in range(len(trained)) if (key := ensemble_key(k, candidate.initial_ulps)) in trained]
    reference, anchor = losses["reference"], losses["float64"]
    judged = verdict.judge(
        reference,
        losses[name],
        np.stack([losses[key] for key in ensemble]),
        anchor,
        norms={
            "reference": norms["reference"],
            "other": norms[name],
            "anchor": norms["float64"],
            "ensemble": np.stack([norms[key] for key in ensemble]),
        },
        runs=len(ensemble),
        minimum=candidate.minimum,
    )
    return {
        "family": family,
        "run": name,
        "kind": "correct" if name in CORRECT else "bug" if name in BUGS else "informational",
        "steps": judged.steps,
        "ensemble_size": len(ensemble),
        "worst_floor_ratio": judged.worst_floor_ratio,
        "worst_floor_step": judged.worst_floor_step,
        "worst_accuracy_ratio": judged.worst_accuracy_ratio,
        "worst_norm_ratio": judged.worst_norm_ratio,
        "horizon": judged.horizon,
        "outcome": judged.outcome,
        "decided": judged.decided,
        "final_floor": float(judged.floor[-1]),
        "median_anchor_error": float(np.median(np.abs(losses[name] - anchor) / np.abs(anchor))),
        "reference_median_anchor_error": float(np.median(np.abs(reference - anchor) / np.abs(anchor))),
    }


def judged_rows(result: dict, candidate: Candidate) -> list[dict]:
    """Every judged run of one family's file, at the current constants and ``candidate``."""
    trained = {name: (run["losses"], run["norms"]) for name, run in result["runs"].items()}
    names = [name for name in trained if name not in ("reference", "float64") and not name.startswith("ensemble ")]
    return [judge_run(result["family"], name, trained, candidate) for name in names]


def markdown(rows: list[dict], precision: str, candidate: Candidate) -> str:
    lines = [
        f"Verdict in {precision} at FLOOR_MULTIPLE = {verdict.FLOOR_MULTIPLE:g}, ACCURACY_FACTOR = "
        f"{verdict.ACCURACY_FACTOR:g}, K = {rows[0]['ensemble_size'] if rows else verdict.ENSEMBLE_SIZE}: "
        f"{candidate.describe()}.",
        "",
        "| family | run | kind | steps | worst drift/floor (step) | worst f64 error / reference's "
        "| weight norm's f64 error / reference's | score | horizon | verdict (decided by) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['run']} | {r['kind']} | {r['steps']} | {r['worst_floor_ratio']:.3g} "
            f"({r['worst_floor_step']}) | {r['worst_accuracy_ratio']:.3g} | {r['worst_norm_ratio']:.3g} "
            f"| {score(r):.3g} | {r['horizon'] or '-'} | {r['outcome']} "
            f"({r['decided']}) |"
        )
    return "\n".join(lines) + "\n\n" + margins(rows) + "\n"


def margins(rows: list[dict]) -> str:
    """The error rates, and each test's worst correct run and mildest caught bug (``score``)."""
    correct = [r for r in rows if r["kind"] == "correct"]
    bugs = [r for r in rows if r["kind"] == "bug"]
    caught = [r for r in bugs if r["outcome"] == verdict.DISAGREE]
    false_alarms = sum(r["outcome"] == verdict.DISAGREE for r in correct)
    kinds = {r["run"] for r in bugs}
    never = kinds - {r["run"] for r in caught}
    missed = sorted({r["run"] for r in bugs if r["outcome"] != verdict.DISAGREE} - never)
    text = [
        f"False alarms: {false_alarms} of {len(correct)} correct runs. Bugs caught: {len(caught)} of {len(bugs)} runs "
        f"({len(kinds) - len(never)} of {len(kinds)} kinds"
        + (f"; never caught: {', '.join(sorted(never))}" if never else "")
        + (f"; missed at least once: {', '.join(missed)}" if missed else "")
        + ")."
    ]
    if correct:
        text.append(
            f"Worst correct run: drift/floor {max(r['worst_floor_ratio'] for r in correct):.3g}, "
            f"f64 error ratio {max(r['worst_accuracy_ratio'] for r in correct):.3g}, weight norm's f64 error ratio "
            f"{max(r['worst_norm_ratio'] for r in correct):.3g}; the highest score {max(map(score, correct)):.3g}."
        )
    if caught:
        text.append(
            f"Mildest caught bug: drift/floor {min(r['worst_floor_ratio'] for r in caught):.3g}, "
            f"f64 error ratio {min(r['worst_accuracy_ratio'] for r in caught):.3g}; the lowest score "
            f"{min(map(score, caught)):.3g}."
        )
    text.append(
        "Score: max(min(drift/floor / FLOOR_MULTIPLE, f64 error ratio / ACCURACY_FACTOR), weight norm's ratio / "
        "ACCURACY_FACTOR), the verdict's margin before any horizon: at most 1 agrees, above 1 disagrees."
    )
    return " ".join(text)


def score(row: dict) -> float:
    """A run's distance to the verdict's edge before any horizon: the losses agree when either loss test
    is within its limit, and the norm must be within its own; above 1, a disagreement."""
    losses = min(
        row["worst_floor_ratio"] / verdict.FLOOR_MULTIPLE, row["worst_accuracy_ratio"] / verdict.ACCURACY_FACTOR
    )
    return max(losses, row["worst_norm_ratio"] / verdict.ACCURACY_FACTOR)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ml_patterns_bench.calibrate_verdict", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", type=Path, default=Path("data/nci"), help="the default dataset (prepared if missing)")
    parser.add_argument("--out", type=Path, required=True, help="directory for family-*.json and calibration.md")
    parser.add_argument("--runs", type=int, default=verdict.ENSEMBLE_SIZE, help="reruns in each family's ensemble")
    parser.add_argument(
        "--family", type=int, action="append", help="run only these families (indices into FAMILIES; repeatable): "
        "processes run in parallel write their families' files into one --out, and the table covers all of them",
    )  # fmt: skip
    parser.add_argument(
        "--only", action="append", help="judge only these runs of each family (a name from CORRECT, BUGS; repeatable)"
    )
    parser.add_argument(
        "--rejudge", action="store_true", help="train nothing: judge the runs kept in --out's family files again"
    )
    parser.add_argument(
        "--precision", choices=("float32", MIXED), default="float32", help="what every run but the anchor trains in"
    )
    parser.add_argument(
        "--initial-ulps",
        type=int,
        action="append",
        help="the float32 ulps an ensemble's reruns start off (repeatable: one ensemble each is trained, the "
        "first judges; default: compare's, ml_patterns.ulps.INITIAL_ULPS)",
    )
    parser.add_argument(
        "--loss-minimum",
        type=float,
        help="the floor's minimum, relative (default: compare's for --precision, precision_runs.loss_minimum)",
    )
    parser.add_argument("--table", default="calibration.md", help="the table's file name in --out")
    args = parser.parse_args(argv)
    args.initial_ulps = args.initial_ulps or [INITIAL_ULPS[args.precision]]
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.rejudge:
        train(args)
    minimum = loss_minimum(args.precision, "cpu") if args.loss_minimum is None else Tolerance(args.loss_minimum, 0.0)
    candidate = Candidate(args.initial_ulps[0], minimum)
    results = [json.loads(path.read_text()) for path in sorted(args.out.glob("family-*.json"))]
    for result in results:
        if result["settings"].get("precision", "float32") != args.precision:  # the float32 files predate the field
            raise SystemExit(f"{result['family']} in {args.out} trained in {result['settings']['precision']}: "
                             f"judge it with --precision {result['settings']['precision']}")  # fmt: skip
    rows = [row for result in results for row in judged_rows(result, candidate)]
    table = markdown(rows, args.precision, candidate)
    (args.out / args.table).write_text(table)
    print("\n" + table)


def train(args) -> None:
    """Trains the chosen families in ``args.precision`` and writes each one's file (its runs' losses,
    settings, machine)."""
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")  # one thread, before jax starts
    import jax
    import torch

    from jax_impl import runtime as jax_runtime
    from torch_impl import runtime as torch_runtime

    for runtime in (torch_runtime, jax_runtime):
        runtime.set_precision("float32")
    if not (args.data / "manifest.json").is_file():
        prepare_dataset(args.data, progress=True)
    families = [FAMILIES[i] for i in args.family] if args.family else list(FAMILIES)
    for family in families:
        family = dataclasses.replace(family, settings=dataclasses.replace(family.settings, precision=args.precision))
        started = time.perf_counter()
        log = lambda text: print(text, flush=True)  # noqa: E731
        trained = run_family(family, args.data, args.runs, args.initial_ulps, log, args.only)
        result = {
            "family": family.name,
            "settings": dataclasses.asdict(family.settings),
            "ensemble_size": args.runs,
            "machine": {
                "processor": _processor(),
                "load_average": os.getloadavg(),
                "versions": {"torch": torch.__version__, "jax": jax.__version__, "python": platform.python_version()},
                "threads": "one (torch 2 threads: two)",
                "date": time.strftime("%Y-%m-%d"),
            },
            "seconds": time.perf_counter() - started,
            "runs": trained,
        }
        slug = "".join(c if c.isalnum() else "-" for c in family.name)
        (args.out / f"family-{slug}.json").write_text(json.dumps(result, indent=1))


def _processor() -> str:
    """The CPU's model name (Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
