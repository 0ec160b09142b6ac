"""The error rates of ``ml-patterns compare``'s verdict (``ml_patterns.verdict``), measured over a
matrix of correct runs and injected bugs rather than on one sample.

    python -m ml_patterns_bench.calibrate_verdict --data data/nci --out verdict-calibration [--family I ...]

Everything runs in this process, one thread: the compare workload (the molecule models at
``CompareSettings``' defaults, the same Trainers, batches, batch preparation and initial weights as
compare's workers). Each *family* (a model, a seed, a length) trains the reference (torch: fused
AdamW, SDPA attention, one thread), its ensemble as compare's runner makes it (``--runs`` reruns, the
k-th from the initial weights one ulp off and one more ulp after every step, signs from seed + k:
``torch_impl.runtime.rounding_noise``) and its float64 anchor (``torch_impl.state.float64_twin``),
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
and the table written (``calibration.md``: per run the worst drift / ensemble floor and float64 error
/ the reference's before any horizon, the horizon, the verdict and the test that decided; the error
rates and margins). Families run by parallel processes (``--family``) end in one table;
``--rejudge`` judges the kept runs again without training (after a change of the constants).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import numpy as np  # noqa: E402

from ml_patterns import verdict  # noqa: E402
from ml_patterns.callbacks import Callback  # noqa: E402
from ml_patterns.data import LazyDataset, Subset  # noqa: E402
from ml_patterns.molecules.batches import BatchPreparer  # noqa: E402
from ml_patterns.molecules.prepare import prepare_dataset, read_manifest  # noqa: E402
from ml_patterns.samplers import LengthGroupedSampler, sequence_lengths  # noqa: E402
from ml_patterns_app.compare.settings import CompareSettings  # noqa: E402

BUGS = (
    "lr x1.5",
    "Adam epsilon inside the sqrt",
    "optax float32 bias correction",
    "weight decay +1%",
    "GELU tanh",
    "LayerNorm eps 1e-6",
)
# The mildest bugs, injected in the long runs too: a bug that builds up slowly shows in more steps.
MILD_BUGS = ("optax float32 bias correction", "weight decay +1%")
CORRECT = ("jax", "torch foreach AdamW", "torch written-out attention", "torch 2 threads")
INFORMATIONAL = ("jax, optax's one-rounding AdamW decay",)


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
)


class Record(Callback):
    """Every step's loss and each epoch's global weight norm (``verdict.global_norm``)."""

    def __init__(self):
        self.losses: list = []
        self.norms: list[float] = []

    def on_batch_end(self, batch_idx: int, trainer, loss) -> None:
        self.losses.append(loss)

    def on_epoch_end(self, epoch: int, trainer, metrics) -> None:
        self.norms.append(verdict.global_norm(trainer.snapshot_weights()))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([float(loss) for loss in self.losses]), np.array(self.norms)


class Workload:
    """One family's data, model config, initial weights and loaders, built as compare's worker builds them."""

    def __init__(self, data: Path, settings: CompareSettings):
        import torch_impl.molecules.models as torch_models
        from torch_impl import state

        self.settings = settings
        manifest = read_manifest(data)
        train = LazyDataset(data, split="train")
        if settings.max_train_molecules:
            train = Subset(train, range(min(settings.max_train_molecules, len(train))))
        self.train = train
        sampler = settings.train_sampler(train)
        lengths = sampler.lengths if isinstance(sampler, LengthGroupedSampler) else sequence_lengths(train)
        self.buckets = settings.buckets(manifest, sampler, lengths)
        self.config = settings.model_config(manifest, max_len=self.buckets[-1])
        self.steps = -(-len(train) // settings.batch_size)
        self.optimizer = settings.optimizer(self.steps * settings.epochs)
        self.weights = state.to_numpy(torch_models.build_model(self.config))

    def loader(self, impl):
        collate = {"buckets": self.buckets, "max_length": self.buckets[-1], "group_by_length": True}
        return impl.data.make_loader(self.train, self.settings.batch_size, seed=self.settings.seed, **collate)


def one_ulp_arrays(arrays: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {k: verdict.one_ulp(v, rng) if np.issubdtype(v.dtype, np.floating) else v for k, v in sorted(arrays.items())}


def torch_losses(work: Workload, weights: dict, variant: str = "", rounding_seed: int | None = None) -> tuple:
    """(losses, norms) of the reference (``variant`` ""), or one of: "float64", "foreach", "written-out", "2 threads";
    with ``rounding_seed``, a run of the ensemble (one ulp of noise a step, as compare's)."""
    import torch

    import torch_impl.data  # noqa: F401
    import torch_impl.molecules.models as models
    from torch_impl import runtime, training

    torch.set_num_threads(2 if variant == "2 threads" else 1)
    model = models.build_model(work.config, weights=weights)
    prepare = BatchPreparer(work.config)
    transform = prepare
    if variant == "float64":
        model, transform = runtime.float64_reference(model, prepare)
    if variant == "written-out":
        for module in model.modules():
            if isinstance(module, models.Attention):
                module.fused = False
    record = Record()
    callbacks = [record] if rounding_seed is None else [record, runtime.rounding_noise(rounding_seed)]
    device = runtime.select_device("cpu")
    trainer = training.Trainer(model, work.optimizer, callbacks, device=device, batch_transform=transform)
    if variant == "foreach":
        for group in trainer.optimizer.optimizer.param_groups:
            group.update(fused=False, foreach=True)
    trainer.fit(work.loader(torch_impl), None, work.settings.epochs)
    torch.set_num_threads(1)
    return record.result()


def jax_optimizer(work: Workload, bug: str):
    """The optimizer of the JAX run ``bug`` (a config, or an optax chain where the bug is in it)."""
    import optax

    from jax_impl import optim

    config = work.optimizer
    if bug == "lr x1.5":
        return dataclasses.replace(config, learning_rate=1.5 * config.learning_rate)
    if bug == "weight decay +1%":
        return dataclasses.replace(config, weight_decay=1.01 * config.weight_decay)
    b1, b2 = config.betas
    schedule = optim.learning_rate_schedule(config)
    adam = {
        "Adam epsilon inside the sqrt": optax.scale_by_adam(b1, b2, eps=0.0, eps_root=config.eps),
        "optax float32 bias correction": optax.scale_by_adam(b1, b2, eps=config.eps),
    }.get(bug, optim.scale_by_adam(b1, b2, config.eps))
    if bug == INFORMATIONAL[0]:
        last = [optax.add_decayed_weights(config.decay), optax.scale_by_learning_rate(schedule)]
    elif bug in ("Adam epsilon inside the sqrt", "optax float32 bias correction"):
        last = [optim.decay_then_step(schedule, config.decay)]
    else:
        return config
    return optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), adam, *last)


def jax_losses(work: Workload, bug: str = "") -> tuple:
    """(losses, norms) of the JAX run, with ``bug`` injected (a name from ``BUGS``, or "")."""
    import jax_impl.data  # noqa: F401
    import jax_impl.molecules.models as models
    from jax_impl import runtime, training

    config = work.config
    if bug == "GELU tanh":
        config = dataclasses.replace(config, gelu_approximate=True)
    if bug == "LayerNorm eps 1e-6":
        config = dataclasses.replace(config, layer_norm_eps=1e-6)
    model = models.build_model(config, weights=work.weights)
    record = Record()
    trainer = training.Trainer(
        model,
        jax_optimizer(work, bug),
        [record],
        device=runtime.select_device("cpu"),
        batch_transform=BatchPreparer(work.config),
        pad_batches_to=work.settings.batch_size,
    )
    trainer.fit(work.loader(jax_impl), None, work.settings.epochs)
    return record.result()


def run_family(family: Family, data: Path, runs: int, log, only: list[str] | None = None) -> dict:
    """Trains the family's reference, ensemble, anchor and judged runs: ``{run: (losses, norms)}``."""
    work = Workload(data, family.settings)
    started = time.perf_counter()
    seed = family.settings.seed
    trained = {"reference": torch_losses(work, work.weights)}
    for k in range(runs):  # as compare's runner: the initial weights one ulp off, and one ulp a step
        trained[f"ensemble {k}"] = torch_losses(work, one_ulp_arrays(work.weights, seed + k), rounding_seed=seed + k)
    trained["float64"] = torch_losses(work, work.weights, "float64")
    log(f"{family.name}: reference, {runs} reruns and float64 in {time.perf_counter() - started:.0f} s")
    others = {
        "jax": lambda: jax_losses(work),
        "torch foreach AdamW": lambda: torch_losses(work, work.weights, "foreach"),
        "torch written-out attention": lambda: torch_losses(work, work.weights, "written-out"),
        **({"torch 2 threads": lambda: torch_losses(work, work.weights, "2 threads")} if family.threads else {}),
        **{bug: (lambda bug=bug: jax_losses(work, bug)) for bug in family.bugs},
    }
    for name, run in others.items():
        if only and name not in only:
            continue
        began = time.perf_counter()
        trained[name] = run()
        row = judge_run(family.name, name, trained)
        log(f"  {name}: floor ratio {row['worst_floor_ratio']:.3g}, accuracy {row['worst_accuracy_ratio']:.3g}, "
            f"norm {row['worst_norm_ratio']:.3g}, {row['outcome']} ({time.perf_counter() - began:.0f} s)")  # fmt: skip
    return {name: {"losses": losses.tolist(), "norms": norms.tolist()} for name, (losses, norms) in trained.items()}


def judge_run(family: str, name: str, trained: dict) -> dict:
    """One judged run's row: the verdict at the current constants on ``trained[name]`` (losses, norms)."""
    losses = {key: np.asarray(value[0]) for key, value in trained.items()}
    norms = {key: np.asarray(value[1]) for key, value in trained.items()}
    ensemble = [key for key in trained if key.startswith("ensemble ")]
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


def judged_rows(result: dict) -> list[dict]:
    """Every judged run of one family's file, at the current constants."""
    trained = {name: (run["losses"], run["norms"]) for name, run in result["runs"].items()}
    names = [name for name in trained if name not in ("reference", "float64") and not name.startswith("ensemble ")]
    return [judge_run(result["family"], name, trained) for name in names]


def markdown(rows: list[dict]) -> str:
    lines = [
        f"Verdict at FLOOR_MULTIPLE = {verdict.FLOOR_MULTIPLE:g}, ACCURACY_FACTOR = {verdict.ACCURACY_FACTOR:g}, "
        f"K = {rows[0]['ensemble_size'] if rows else verdict.ENSEMBLE_SIZE} reruns with one ulp of noise a step.",
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
    missed = sorted(kinds - {r["run"] for r in caught})
    text = [
        f"False alarms: {false_alarms} of {len(correct)} correct runs. Bugs caught: {len(caught)} of {len(bugs)} runs "
        f"({len(kinds) - len(missed)} of {len(kinds)} kinds"
        + (f"; missed at least once: {', '.join(missed)})." if missed else ").")
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
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.rejudge:
        train(args)
    rows = [row for path in sorted(args.out.glob("family-*.json")) for row in judged_rows(json.loads(path.read_text()))]
    (args.out / "calibration.md").write_text(markdown(rows))
    print("\n" + markdown(rows))


def train(args) -> None:
    """Trains the chosen families and writes each one's file (its runs' losses, settings, machine)."""
    from jax_impl import runtime as jax_runtime
    from torch_impl import runtime as torch_runtime

    for runtime in (torch_runtime, jax_runtime):
        runtime.set_precision("float32")
    if not (args.data / "manifest.json").is_file():
        prepare_dataset(args.data, progress=True)
    families = [FAMILIES[i] for i in args.family] if args.family else list(FAMILIES)
    for family in families:
        started = time.perf_counter()
        trained = run_family(family, args.data, args.runs, lambda text: print(text, flush=True), args.only)
        result = {
            "family": family.name,
            "settings": dataclasses.asdict(family.settings),
            "ensemble_size": args.runs,
            "machine": {"processor": _processor(), "load_average": os.getloadavg()},
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
