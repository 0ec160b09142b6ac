"""The error rates of ``ml-patterns compare``'s verdict (``ml_patterns.verdict``), measured over a
matrix of correct runs and injected bugs rather than on one sample.

    python -m ml_patterns_bench.calibrate_verdict --data data/nci --out verdict-calibration [--family I ...]

Everything runs in this process, one thread: the compare workload (the molecule models at
``CompareSettings``' defaults, the same Trainers, batches, batch preparation and initial weights as
compare's workers). Each *family* (a model, a seed, a length) trains the reference (torch: fused
AdamW, SDPA attention, one thread), its ensemble (the reference from the initial weights one ulp
off, ``ENSEMBLE_SIZE`` sign seeds) and its float64 anchor (``torch_impl.state.float64_twin``), then
the runs judged against them:

- correct: JAX; torch with foreach instead of fused AdamW; torch with the written-out attention
  instead of SDPA; torch on 2 threads. Each must agree: a DISAGREE is a false alarm.
- bugs, injected in the JAX side: the learning rate x1.5; Adam's epsilon inside the square root
  (optax's ``eps_root``); optax's own float32 Adam bias correction; weight decay 1% off; GELU's tanh
  form for the exact one; LayerNorm's epsilon 1e-6 (flax's default) for 1e-5. Each must disagree.
- informational: JAX with optax's stock AdamW decay (one rounding where torch has two), the form
  ``jax_impl.optim.decay_then_step`` replaced.

Per run it records the worst drift / ensemble floor and the worst float64 error / the reference's
(before any horizon), the horizon and the verdict at the current constants; writes a
``family-*.json`` per family (every ratio, the settings, the machine) and ``calibration.md``, the
table of every family's file in ``--out`` (so that families run by parallel processes, ``--family``,
end in one table).
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


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    settings: CompareSettings
    bugs: bool = False  # inject the bugs in this family's JAX side too
    threads: bool = False  # run torch on 2 threads too (slow on a loaded machine: OpenMP waits at barriers)


FAMILIES = (
    # The bugs at 1 epoch (63 steps): a bug that builds up slowly is harder to catch in a short run.
    Family("multitask, seed 0, 1 epoch", CompareSettings(epochs=1), bugs=True),
    Family("multitask, seed 1", CompareSettings(seed=1), threads=True),
    Family("multitask, seed 2", CompareSettings(seed=2)),
    Family("autoencoder, seed 0", CompareSettings(model="autoencoder")),
    Family("multitask, seed 3, 6 epochs", CompareSettings(seed=3, epochs=6)),
)
CORRECT = (
    "jax",
    "torch foreach AdamW",
    "torch single-tensor AdamW",
    "torch written-out attention",
    "torch 2 threads",
)
BUGS = (
    "lr x1.5",
    "Adam epsilon inside the sqrt",
    "optax float32 bias correction",
    "weight decay +1%",
    "GELU tanh",
    "LayerNorm eps 1e-6",
)
INFORMATIONAL = ("jax, optax's one-rounding AdamW decay",)


class StepLosses(Callback):
    def __init__(self):
        self.losses: list = []

    def on_batch_end(self, batch_idx: int, trainer, loss) -> None:
        self.losses.append(loss)


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


def torch_losses(work: Workload, weights: dict, variant: str = "") -> np.ndarray:
    """The reference (``variant`` ""), or one of: "float64", "foreach", "single-tensor", "written-out",
    "2 threads"."""
    import torch

    import torch_impl.data  # noqa: F401
    import torch_impl.molecules.models as models
    from torch_impl import runtime, state, training

    torch.set_num_threads(2 if variant == "2 threads" else 1)
    model = models.build_model(work.config, weights=weights)
    prepare = BatchPreparer(work.config)
    transform = prepare
    if variant == "float64":
        model = state.float64_twin(model)
        transform = lambda *args, **kwargs: state.float64_batch(prepare(*args, **kwargs))  # noqa: E731
    if variant == "written-out":
        for module in model.modules():
            if isinstance(module, models.Attention):
                module.fused = False
    losses = StepLosses()
    device = runtime.select_device("cpu")
    trainer = training.Trainer(model, work.optimizer, [losses], device=device, batch_transform=transform)
    if variant in ("foreach", "single-tensor"):
        for group in trainer.optimizer.optimizer.param_groups:
            group.update(fused=False, foreach=variant == "foreach")
    trainer.fit(work.loader(torch_impl), None, work.settings.epochs)
    torch.set_num_threads(1)
    return np.array([float(loss) for loss in losses.losses])


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


def jax_losses(work: Workload, bug: str = "") -> np.ndarray:
    import jax_impl.data  # noqa: F401
    import jax_impl.molecules.models as models
    from jax_impl import runtime, training

    config = work.config
    if bug == "GELU tanh":
        config = dataclasses.replace(config, gelu_approximate=True)
    if bug == "LayerNorm eps 1e-6":
        config = dataclasses.replace(config, layer_norm_eps=1e-6)
    model = models.build_model(config, weights=work.weights)
    losses = StepLosses()
    trainer = training.Trainer(
        model,
        jax_optimizer(work, bug),
        [losses],
        device=runtime.select_device("cpu"),
        batch_transform=BatchPreparer(work.config),
        pad_batches_to=work.settings.batch_size,
    )
    trainer.fit(work.loader(jax_impl), None, work.settings.epochs)
    return np.array([float(loss) for loss in losses.losses])


def run_family(family: Family, data: Path, runs: int, log, only: list[str] | None = None) -> list[dict]:
    work = Workload(data, family.settings)
    started = time.perf_counter()
    reference = torch_losses(work, work.weights)
    ensemble = np.stack([torch_losses(work, one_ulp_arrays(work.weights, seed)) for seed in range(runs)])
    anchor = torch_losses(work, work.weights, "float64")
    log(f"{family.name}: reference, {runs} reruns and float64 in {time.perf_counter() - started:.0f} s")
    others = {
        "jax": lambda: jax_losses(work),
        "torch foreach AdamW": lambda: torch_losses(work, work.weights, "foreach"),
        "torch single-tensor AdamW": lambda: torch_losses(work, work.weights, "single-tensor"),
        "torch written-out attention": lambda: torch_losses(work, work.weights, "written-out"),
        **({"torch 2 threads": lambda: torch_losses(work, work.weights, "2 threads")} if family.threads else {}),
        **({bug: (lambda bug=bug: jax_losses(work, bug)) for bug in BUGS + INFORMATIONAL} if family.bugs else {}),
    }
    rows = []
    for name, run in others.items():
        if only and name not in only:
            continue
        began = time.perf_counter()
        losses = run()
        judged = verdict.judge(reference, losses, ensemble, anchor, runs=runs)
        kind = "correct" if name in CORRECT else "bug" if name in BUGS else "informational"
        rows.append(
            {
                "family": family.name,
                "run": name,
                "kind": kind,
                "steps": judged.steps,
                "worst_floor_ratio": judged.worst_floor_ratio,
                "worst_floor_step": judged.worst_floor_step,
                "worst_accuracy_ratio": judged.worst_accuracy_ratio,
                "horizon": judged.horizon,
                "outcome": judged.outcome,
                "decided": judged.decided,
                "final_floor": float(judged.floor[-1]),
                "median_anchor_error": float(np.median(np.abs(losses - anchor) / np.abs(anchor))),
                "reference_median_anchor_error": float(np.median(np.abs(reference - anchor) / np.abs(anchor))),
                "seconds": time.perf_counter() - began,
            }
        )
        log(f"  {name}: floor ratio {judged.worst_floor_ratio:.3g}, accuracy {judged.worst_accuracy_ratio:.3g}, "
            f"{judged.outcome} ({rows[-1]['seconds']:.0f} s)")  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| family | run | kind | steps | worst drift/floor (step) | worst f64 error / reference's | horizon "
        "| verdict |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['run']} | {r['kind']} | {r['steps']} | {r['worst_floor_ratio']:.3g} "
            f"({r['worst_floor_step']}) | {r['worst_accuracy_ratio']:.3g} | {r['horizon'] or '-'} | {r['outcome']} |"
        )
    return "\n".join(lines) + "\n\n" + margins(rows) + "\n"


def margins(rows: list[dict]) -> str:
    """The worst correct run's and the mildest bug's ratios, for choosing the constants."""
    correct = [r for r in rows if r["kind"] == "correct"]
    bugs = [r for r in rows if r["kind"] == "bug"]
    false_alarms = sum(r["outcome"] == verdict.DISAGREE for r in correct)
    caught = sum(r["outcome"] == verdict.DISAGREE for r in bugs)
    text = [f"False alarms: {false_alarms} of {len(correct)} correct runs. Bugs caught: {caught} of {len(bugs)}."]
    if correct:
        text.append(
            f"Worst correct run: drift/floor {max(r['worst_floor_ratio'] for r in correct):.3g}, "
            f"f64 error ratio {max(r['worst_accuracy_ratio'] for r in correct):.3g}."
        )
    if bugs:
        text.append(
            f"Mildest bug: drift/floor {min(r['worst_floor_ratio'] for r in bugs):.3g}, "
            f"f64 error ratio {min(r['worst_accuracy_ratio'] for r in bugs):.3g}."
        )
    return " ".join(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ml_patterns_bench.calibrate_verdict", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", type=Path, default=Path("data/nci"), help="the default dataset (prepared if missing)")
    parser.add_argument("--out", type=Path, required=True, help="directory for calibration.json and .md")
    parser.add_argument("--runs", type=int, default=verdict.ENSEMBLE_SIZE, help="one-ulp reruns per family")
    parser.add_argument(
        "--family", type=int, action="append", help="run only these families (indices into FAMILIES; repeatable): "
        "processes run in parallel write their families' files into one --out, and the table covers all of them",
    )  # fmt: skip
    parser.add_argument(
        "--only", action="append", help="judge only these runs of each family (a name from CORRECT, BUGS; repeatable)"
    )
    args = parser.parse_args(argv)
    from jax_impl import runtime as jax_runtime
    from torch_impl import runtime as torch_runtime

    for runtime in (torch_runtime, jax_runtime):
        runtime.set_precision("float32")
    if not (args.data / "manifest.json").is_file():
        prepare_dataset(args.data, progress=True)
    families = [FAMILIES[i] for i in args.family] if args.family else list(FAMILIES)
    args.out.mkdir(parents=True, exist_ok=True)
    for family in families:
        started = time.perf_counter()
        rows = run_family(family, args.data, args.runs, lambda text: print(text, flush=True), args.only)
        result = {
            "family": family.name,
            "settings": dataclasses.asdict(family.settings),
            "ensemble_size": args.runs,
            "machine": {"processor": _processor(), "load_average": os.getloadavg()},
            "seconds": time.perf_counter() - started,
            "rows": rows,
        }
        slug = "".join(c if c.isalnum() else "-" for c in family.name)
        (args.out / f"family-{slug}.json").write_text(json.dumps(result, indent=1))
    rows = [row for path in sorted(args.out.glob("family-*.json")) for row in json.loads(path.read_text())["rows"]]
    (args.out / "calibration.md").write_text(markdown(rows))
    print("\n" + markdown(rows))


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
