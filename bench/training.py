"""Training the multi-task molecule Transformer: the Trainer's overhead, and the train step itself.

``trainer_overhead`` (the issue's target: at most 3%). Per backend, one epoch four ways over the
same pre-collated batches (collation and file reads are benchmarked apart, by ``data``):

- ``bare loop``: what the Trainer's epoch must do, written out as nanoGPT's bench.py would: per
  batch, ``BatchPreparer`` (standardized labels, token masks), the copy to the device, and the
  Trainer's own step (torch: zero_grad / compute_loss / backward / step; JAX: the jitted donated
  ``train_step`` of ``make_steps``); one device sync at the end. The baseline.
- ``bare loop, batches prepared before timing``: the step alone, over batches already prepared and
  on the device: what preparation costs (``preparation_pct``).
- ``Trainer.fit`` with no callbacks, and with ``ProgressBar(disable=True)`` + ``HistoryLogger``:
  ``fit(batches, num_epochs=epoch + 1)``, the bare loop's work plus the Trainer's (loss summed on
  the device, the epoch mean's host sync, hooks, history, JAX's ``sync_model``), ending on the epoch
  mean's host sync. ``overhead_pct`` = the median over rounds of (its epoch time / the bare loop's) - 1.

Each variant trains its own copy of the same initial weights. After one warm-up epoch each (which
absorbs every compilation), the variants run in interleaved rounds, the order rotated every round,
so a shared machine's drifting load falls on all of them alike; overheads are paired per round.
The JAX rows' ``compile_s`` is the cold compilation of this step, measured by the
``transformer_train_step`` row of the same size (same model, same batch shape).

``transformer_train_step``: the Trainer's step (forward, backward, AdamW update) at two sizes, for
every contender (``ml_patterns_bench.harness``: torch eager, ``torch.compile``, ``jax.jit``, compile time
apart). Every contender starts from the same weights and trains on the same prepared batch; the
losses of the warm-up steps are kept as the proof that they did the same arithmetic. FLOPs:
``ml_patterns_bench.flops.forward_backward`` (the optimizer adds no matmul).

Dropout is 0 in every configuration, so both backends do the same work.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax_impl.data
import jax_impl.molecules.models
import jax_impl.training
import torch_impl.data
import torch_impl.molecules.models
import torch_impl.training
from ml_patterns.callbacks import HistoryLogger, ProgressBar
from ml_patterns.data import LazyDataset, Subset
from ml_patterns.molecules.batches import BatchPreparer
from ml_patterns.molecules.prepare import read_manifest
from ml_patterns.optim import OptimizerConfig

from .common import CONTENDERS, BenchContext, Timing, result_row, skipped_row
from .harness import RUNTIMES, Step
from .models import ModelSize, Problem, make_problem, problem_rows

OVERHEAD, STEP = "trainer_overhead", "transformer_train_step"
OPTIMIZER = OptimizerConfig("adamw", learning_rate=1e-3, weight_decay=0.01)
IMPLS = {
    "torch": (torch_impl.molecules.models, torch_impl.training, torch_impl.data),
    "jax": (jax_impl.molecules.models, jax_impl.training, jax_impl.data),
}

BARE = "bare loop"
STEPS_ONLY = "bare loop, batches prepared before timing"
FIT = "Trainer.fit"
FIT_CALLBACKS = "Trainer.fit + ProgressBar + HistoryLogger"
VARIANTS = (BARE, STEPS_ONLY, FIT, FIT_CALLBACKS)
DETAILS = {
    BARE: "per batch: BatchPreparer, copy to the device, the Trainer's train step; the baseline",
    STEPS_ONLY: "the train step alone, over batches prepared and put on the device before timing; "
    "preparation_pct: the bare loop's share spent preparing and copying batches",
    FIT: "fit(batches, num_epochs=epoch + 1): the bare loop's work plus the Trainer's (device-side loss sum, the "
    "epoch mean's host sync, hooks, history, JAX's sync_model); overhead_pct: median over rounds of its epoch / "
    "the bare loop's - 1; overhead_pct_of_minima: its fastest epoch / the bare loop's fastest - 1",
    FIT_CALLBACKS: "as Trainer.fit, plus ProgressBar(disable=True) (reads the loss every 0.5 s: a host sync) and "
    "HistoryLogger (writes CSV and JSON each epoch)",
}
# Batches per overhead epoch (None: the whole train split). Per-epoch costs (fit's setup, the
# epoch mean, HistoryLogger) spread over fewer batches than in a real epoch: a conservative figure.
OVERHEAD_BATCHES = {"cpu": 16, "gpu": None}
QUICK_OVERHEAD_BATCHES = 2
ROUNDS, QUICK_ROUNDS = 9, 2

# CPU, one core: ~65 ms per step (1.5 GFLOP, where per-op costs weigh) and ~1.1 s (46 GFLOP, the
# ModelConfig defaults: matmul-bound). d_model 256 x 4 layers at batch 64 x 128 would take ~7 s
# per step, minutes per contender. GPU: a few ms (launch-bound) and ~0.2 s (10 TFLOP, matmul-bound)
# on an H100 in full float32. The multi-task model of the default dataset.
SIZES = {
    "cpu": (ModelSize("small", 64, 2, 4, 16, 64), ModelSize("medium", 128, 4, 4, 32, 128)),
    "gpu": (ModelSize("small", 256, 4, 4, 64, 128), ModelSize("medium", 512, 8, 8, 128, 256)),
}


def run(ctx: BenchContext) -> list[dict]:
    manifest = read_manifest(ctx.data_dir)
    rows = []
    for device in ctx.devices:
        first, *others = SIZES[device]
        problem = make_problem(ctx.data_dir, manifest, "multitask", first)
        step_rows = train_step_rows(problem, device, ctx)
        # Right after the step of the same model and batch shape: each contender's overhead rows
        # report that step's compile (its float32 row's, the first; None where nothing compiles).
        compile_s: dict[str, float | None] = {}
        for row in step_rows:
            compile_s.setdefault(row["contender"], row.get("compile_s"))
        rows += step_rows + overhead_rows(problem, device, ctx, compile_s)
        for size in [] if ctx.quick else others:
            rows += train_step_rows(make_problem(ctx.data_dir, manifest, "multitask", size), device, ctx)
    return rows


def trainer(framework: str, problem: Problem, device, callbacks: list = (), precision: str = "float32"):
    """A ``framework`` Trainer of the problem's weights on ``device``, preparing molecule batches."""
    models, training, _ = IMPLS[framework]
    model = models.build_model(problem.config, weights=problem.weights)
    preparer = BatchPreparer(problem.config)
    return training.Trainer(model, OPTIMIZER, callbacks, device=device, batch_transform=preparer, precision=precision)


# -- transformer_train_step ---------------------------------------------------------------------
def train_step_rows(problem: Problem, device: str, ctx: BenchContext) -> list[dict]:
    config = problem.config
    detail = (
        f"multi-task model ({len(config.tasks)} regression heads + masked-token head, d_ff {config.d_ff}, "
        f"{config.n_heads} heads), one fixed prepared batch, AdamW lr {OPTIMIZER.learning_rate} "
        f"wd {OPTIMIZER.weight_decay}, dropout 0"
    )
    rows = problem_rows(STEP, problem, step(problem), ctx, device, detail)
    for row in rows:
        if "timing" in row:
            row["steps_per_s"] = 1.0 / row["timing"]["median_s"]
    return rows


def step(problem: Problem) -> Step:
    def torch_step(device, precision="float32"):
        train_step, _ = RUNTIMES["torch"].bare_train_step(trainer("torch", problem, device, precision=precision))
        batch = RUNTIMES["torch"].to_device(problem.batch, device)
        return lambda: train_step(batch)

    def jax_step(device, precision="float32"):
        jax_trainer = trainer("jax", problem, device, precision=precision)
        # The Trainer's own step object, as fit calls it: its programs, not one fused into an outer jit.
        batch = RUNTIMES["jax"].to_device(problem.batch, device)
        return jax_trainer.train_step, jax_trainer.state, (batch,)

    return Step(torch=torch_step, jax=jax_step)


# -- trainer_overhead ---------------------------------------------------------------------------
def epoch_variants(framework: str, problem: Problem, device, collated: list, log_dir: Path) -> dict[str, Callable]:
    """One epoch over ``collated`` (the framework's loader output) each way; each returns when its
    device work is done."""
    runtime = RUNTIMES[framework]
    preparer = BatchPreparer(problem.config)
    epochs = itertools.count()
    train_step, wait = runtime.bare_train_step(trainer(framework, problem, device))

    def bare_loop() -> None:
        epoch = next(epochs)  # as the Trainer: the token masks of batch i of epoch e are drawn alike
        for index, batch in enumerate(collated):
            train_step(runtime.to_device(preparer(batch, epoch, index, train=True), device))
        wait()

    prepared = [
        runtime.to_device(preparer(batch, 0, index, train=True), device) for index, batch in enumerate(collated)
    ]

    def steps_only() -> None:
        for batch in prepared:
            train_step(batch)
        wait()

    def fit(callbacks: list) -> Callable[[], None]:
        fitted = trainer(framework, problem, device, callbacks)

        def one_epoch() -> None:
            # fit ends on a host sync (the epoch's mean loss reads the last step's result)
            fitted.fit(collated, num_epochs=fitted.epoch + 1)

        return one_epoch

    return {
        BARE: bare_loop,
        STEPS_ONLY: steps_only,
        FIT: fit([]),
        FIT_CALLBACKS: fit([ProgressBar(disable=True), HistoryLogger(log_dir / "history")]),
    }


def interleaved(variants: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each variant in ``rounds`` rounds, after one warm-up call each.

    Every round calls each variant once, the order rotated round by round, so load from other
    processes (which drifts over seconds) falls on all variants alike, not on whichever runs last.
    """
    for variant in variants.values():
        variant()
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            variants[name]()
            samples[name].append(time.perf_counter() - start)
    return samples


def overhead_rows(problem: Problem, device: str, ctx: BenchContext, compile_s: dict[str, float | None]) -> list[dict]:
    """The Trainer's overhead per framework, for the contenders the Trainer is (eager torch, jax.jit)."""
    size = problem.size
    train = LazyDataset(ctx.data_dir, split="train")
    limit = QUICK_OVERHEAD_BATCHES if ctx.quick else OVERHEAD_BATCHES[device]
    whole = len(train) // size.batch  # >= 1: make_problem checked the split holds a batch
    n_batches = whole if limit is None else min(limit, whole)
    dataset = Subset(train, range(n_batches * size.batch))
    rounds = QUICK_ROUNDS if ctx.quick else ROUNDS
    common = (
        f"; {n_batches} pre-collated batches, the same for every variant (collation and file reads excluded: "
        f"see 'data'), padded (or cut) to {size.length} tokens; {size.describe('multitask')}; median of "
        f"{rounds} interleaved rounds after one warm-up epoch each (compilation)"
    )
    workload = {v: f"{v}: epoch of {n_batches} x {size.batch} molecules ({size.name} model)" for v in VARIANTS}
    rows = []
    with tempfile.TemporaryDirectory() as log_dir:
        for name in ctx.contenders:
            contender = CONTENDERS[name]
            if contender.compile_backend is not None:  # the Trainer runs torch eagerly
                continue
            framework = contender.framework
            dev = RUNTIMES[framework].device(device)
            if dev is None:
                reason = f"{framework} has no {device} device here"
                rows += [skipped_row(OVERHEAD, workload[v], name, device, reason) for v in VARIANTS]
                continue
            make_loader = IMPLS[framework][2].make_loader
            loader = make_loader(
                dataset, size.batch, seed=0, drop_last=True, buckets=(size.length,), max_length=size.length
            )
            variants = epoch_variants(framework, problem, dev, list(loader), Path(log_dir) / framework)
            samples = interleaved(variants, rounds)
            for variant, extra in overhead_stats(samples).items():
                rows.append(
                    result_row(
                        OVERHEAD,
                        workload[variant],
                        name,
                        device,
                        Timing.from_samples(samples[variant]),
                        items=n_batches * size.batch,
                        unit="samples/s",
                        compile_s=compile_s.get(name),
                        detail=DETAILS[variant] + common,
                        **extra,
                    )
                )
            RUNTIMES[framework].release_memory()
    train.close()
    return rows


def overhead_stats(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Each variant's comparison with the bare loop, from ``interleaved``'s samples: ``overhead_pct``
    and ``overhead_pct_of_minima`` for the Trainer, ``preparation_pct`` for the prepared batches."""
    base = samples[BARE]
    stats: dict[str, dict[str, float]] = {}
    for variant, seconds in samples.items():
        paired = statistics.median(t / b for t, b in zip(seconds, base))  # per round: the same load
        if variant in (FIT, FIT_CALLBACKS):
            # Other processes only ever add time: on a busy machine the fastest epochs of each are
            # the cleaner comparison, so both figures are kept.
            stats[variant] = {
                "overhead_pct": 100 * (paired - 1),
                "overhead_pct_of_minima": 100 * (min(seconds) / min(base) - 1),
            }
        elif variant == STEPS_ONLY:
            stats[variant] = {"preparation_pct": 100 * (1 - paired)}
        else:
            stats[variant] = {}
    return stats
