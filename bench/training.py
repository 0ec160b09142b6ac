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
  the device, the epoch mean's host sync, hooks, history, JAX's ``sync_model``), ending on the same
  device sync. ``overhead_pct`` = the median over rounds of (its epoch time / the bare loop's) - 1.

Each variant trains its own copy of the same initial weights. After one warm-up epoch each (which
absorbs every compilation), the variants run in interleaved rounds, the order rotated every round,
so a shared machine's drifting load falls on all of them alike; overheads are paired per round.
The JAX rows' ``compile_s`` is the cold compilation of this step, measured by the
``transformer_train_step`` row of the same size (same model, same batch shape).

``transformer_train_step``: one step (forward, backward, AdamW update) at two sizes, per contender:
torch eager, ``torch.compile`` (cold compile timed apart, skipped with the reason if it fails) and
``jax.jit`` (``lower().compile()`` timed apart). Every contender starts from the same weights and
trains on the same prepared batch; the losses of the warm-up steps are kept as the proof that they
did the same arithmetic. FLOPs are counted analytically (``train_step_flops``).

Dropout is 0 in every configuration, so both backends do the same work.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch

import jax_impl.data
import jax_impl.models
import jax_impl.molecules.models
import jax_impl.training
import torch_impl.data
import torch_impl.models
import torch_impl.molecules.models
import torch_impl.training
from bench import frameworks
from bench.common import (
    FRAMEWORK,
    BenchContext,
    Timing,
    failure_reason,
    measure_steps,
    result_row,
    skipped_row,
)
from jax_impl.collate import collate_molecules
from ml_patterns.callbacks import HistoryLogger, ProgressBar
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.data import LazyDataset, Subset
from ml_patterns.optim import OptimizerConfig
from ml_patterns.molecules.prepare import read_manifest
from ml_patterns.training import BatchPreparer
from torch_impl.state import to_numpy

OVERHEAD, STEP = "trainer_overhead", "transformer_train_step"
OPTIMIZER = OptimizerConfig("adamw", learning_rate=1e-3, weight_decay=0.01)

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
    "epoch mean's host sync, hooks, history, JAX's sync_model); overhead_pct: median over rounds of its epoch / the bare loop's - 1; "
    "overhead_pct_of_minima: its fastest epoch / the bare loop's fastest - 1",
    FIT_CALLBACKS: "as Trainer.fit, plus ProgressBar(disable=True) (reads the loss every 0.5 s: a host sync) and "
    "HistoryLogger (writes CSV and JSON each epoch)",
}
# Batches per overhead epoch (None: the whole train split). Per-epoch costs (fit's setup, the
# epoch mean, HistoryLogger) spread over fewer batches than in a real epoch: a conservative figure.
OVERHEAD_BATCHES = {"cpu": 16, "gpu": None}
QUICK_OVERHEAD_BATCHES = 2
ROUNDS, QUICK_ROUNDS = 9, 2


@dataclasses.dataclass(frozen=True)
class StepSize:
    name: str
    d_model: int
    n_layers: int
    n_heads: int
    batch: int
    length: int  # every sequence padded (or cut) to this many tokens

    def config(self, manifest: dict) -> ModelConfig:
        """The default dataset's multi-task model (its regression heads and the masked-token head)."""
        return ModelConfig.from_manifest(
            manifest, d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers, d_ff=4 * self.d_model,
            max_len=self.length, dropout=0.0, attention_dropout=0.0, seed=0,
        )

    def describe(self) -> str:
        return f"{self.name}: d_model {self.d_model} x {self.n_layers} layers, batch {self.batch} x length {self.length}, AdamW"


# CPU, one core: ~65 ms per step (1.5 GFLOP, where per-op costs weigh) and ~1.1 s (46 GFLOP, the
# ModelConfig defaults: matmul-bound). d_model 256 x 4 layers at batch 64 x 128 would take ~7 s
# per step, minutes per contender. GPU: a few ms (launch-bound) and ~0.2 s (10 TFLOP, matmul-bound)
# on an H100 in full float32.
SIZES = {
    "cpu": (StepSize("small", 64, 2, 4, 16, 64), StepSize("medium", 128, 4, 4, 32, 128)),
    "gpu": (StepSize("small", 256, 4, 4, 64, 128), StepSize("medium", 512, 8, 8, 128, 256)),
}


def train_step_flops(config: ModelConfig, batch: int, length: int) -> int:
    """Matmul FLOPs of one multi-task train step: 3 x the forward's (each matmul's backward is two
    matmuls of its size, for the input and the weight gradient; every input needs its gradient, as
    the embeddings train). Embeddings, LayerNorm, softmax, GELU, losses and AdamW are not counted.

    The encoder runs once per distinct head input: on the clean tokens for the regression heads and
    on the masked ones for the masked-token head.
    """
    tokens, d, vocab = batch * length, config.d_model, config.vocab_size
    # q, k, v and output projections, the two feed-forward layers; attention scores and the
    # weighted sum of the values, each [length x length] per head over head_dim (all heads: d).
    layer = 2 * tokens * (4 * d * d + 2 * d * config.d_ff) + 2 * 2 * batch * length * length * d
    passes = bool(config.tasks) + config.has_mlm_head
    regression = len(config.tasks) * 2 * batch * (d * d + d)  # dense d -> d, out d -> 1, on the pooled vector
    mlm = 2 * tokens * (d * d + d * vocab) if config.has_mlm_head else 0  # dense, decoder to the vocabulary
    return 3 * (passes * config.n_layers * layer + regression + mlm)


@dataclasses.dataclass(frozen=True)
class Problem:
    size: StepSize
    config: ModelConfig
    weights: dict[str, np.ndarray]  # canonical initial weights, the same for every contender
    batch: dict  # one prepared numpy batch (ml_patterns.molecules.batches), [size.batch, size.length]


def make_problem(data_dir: Path, manifest: dict, size: StepSize) -> Problem:
    """The first ``size.batch`` molecules of the train split, padded (or cut) to ``size.length`` and
    prepared as the Trainer prepares batch 0 of epoch 0; weights from ``torch_impl.molecules.models.build_model``."""
    config = size.config(manifest)
    dataset = LazyDataset(data_dir, split="train")
    if len(dataset) < size.batch:
        raise ValueError(f"{data_dir}: the train split has {len(dataset)} molecules, fewer than the batch of {size.batch}")
    collated = collate_molecules([dataset[i] for i in range(size.batch)], buckets=(size.length,), max_length=size.length)
    dataset.close()
    batch = BatchPreparer(config)(collated, 0, 0, train=True)
    return Problem(size, config, to_numpy(torch_impl.molecules.models.build_model(config)), batch)


def run(ctx: BenchContext) -> list[dict]:
    manifest = read_manifest(ctx.data_dir)
    rows = []
    for device in ctx.devices:
        first, *others = SIZES[device]
        problem = make_problem(ctx.data_dir, manifest, first)
        step_rows = train_step_rows(problem, device, ctx)
        # Right after the step of the same model and batch shape: JAX keeps the executable it
        # compiled, so the Trainer's first call finds it, and the JAX rows report that compile.
        jax_compile_s = next((row.get("compile_s") for row in step_rows if row["contender"] == "jax.jit"), None)
        rows += step_rows + overhead_rows(problem, device, ctx, jax_compile_s)
        for size in [] if ctx.quick else others:
            rows += train_step_rows(make_problem(ctx.data_dir, manifest, size), device, ctx)
    return rows


# -- transformer_train_step ---------------------------------------------------------------------
def train_step_rows(problem: Problem, device: str, ctx: BenchContext) -> list[dict]:
    rows = []
    for contender in ctx.contenders:
        rows.append(STEP_CONTENDERS[contender](problem, device, ctx.quick))
        frameworks.release_memory()
    return rows


def torch_train_step(model: torch.nn.Module, optimizer) -> Callable[[dict], torch.Tensor]:
    """``torch_impl.training.Trainer``'s step (of its ``model`` and ``optimizer``) as a function of
    the batch; returns the loss."""

    def step(batch: dict) -> torch.Tensor:
        optimizer.zero_grad()
        loss = model.compute_loss(batch)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def torch_trainer(problem: Problem, device: torch.device, callbacks: list = ()) -> torch_impl.training.Trainer:
    """A torch Trainer of the problem's weights on ``device``."""
    model = torch_impl.molecules.models.build_model(problem.config, weights=problem.weights)
    return torch_impl.training.Trainer(model, OPTIMIZER, callbacks, device=device)


def jax_trainer(problem: Problem, device: jax.Device, callbacks: list = ()) -> jax_impl.training.Trainer:
    """A JAX Trainer of the problem's weights, its state committed to ``device`` leaf by leaf.

    The step returns a state committed leaf by leaf, but the Trainer starts from one whose optimizer
    counters are not: its step's first call would compile for that signature, and its second again
    for the committed one, a whole extra compilation. Committing up front spares the warm-up that;
    every later step, so every timed one, runs the same either way.
    """
    model = jax_impl.molecules.models.build_model(problem.config, weights=problem.weights)
    trainer = jax_impl.training.Trainer(model, OPTIMIZER, callbacks, device=device)
    trainer.state = jax.device_put(trainer.state, device)
    return trainer


def torch_eager(problem: Problem, device: str, quick: bool) -> dict:
    return _torch(problem, device, quick, compile_backend=None)


def torch_compiled(problem: Problem, device: str, quick: bool, backend: str = "inductor") -> dict:
    """``torch.compile`` of the whole step; compile time is the warm-up steps' time beyond as many
    timed steps. A failure to compile skips this contender with the reason."""
    try:
        return _torch(problem, device, quick, compile_backend=backend)
    except Exception as error:  # reported as the skip reason, not swallowed
        return skipped_row(STEP, problem.size.describe(), "torch.compile", device, failure_reason("torch.compile", error))


def _torch(problem: Problem, device: str, quick: bool, compile_backend: str | None) -> dict:
    contender = "torch eager" if compile_backend is None else "torch.compile"
    dev = frameworks.torch_device(device)
    if dev is None:
        return skipped_row(STEP, problem.size.describe(), contender, device, f"torch has no {device} device here")
    frameworks.reset_peak_memory(dev)
    trainer = torch_trainer(problem, dev)
    train_step = torch_train_step(trainer.model, trainer.optimizer)
    batch = torch_impl.models.as_batch(problem.batch, dev)
    losses, timing, compile_s = frameworks.measure_torch_step(lambda: train_step(batch), dev, quick, compile_backend)
    return _step_row(problem, contender, device, timing, compile_s, frameworks.torch_peak_memory(dev), losses)


def jax_jit(problem: Problem, device: str, quick: bool) -> dict:
    """The Trainer's jitted donated step (``make_steps``), compiled by ``lower(...).compile()``, timed apart."""
    dev = frameworks.jax_device(device)
    if dev is None:
        return skipped_row(STEP, problem.size.describe(), "jax.jit", device, f"jax has no {device} backend here")
    jax.clear_caches()  # compile from scratch, like every other contender
    trainer = jax_trainer(problem, dev)
    state, train_step = trainer.state, trainer.train_step
    del trainer
    batch = jax.device_put(jax_impl.models.as_batch(problem.batch), dev)
    start = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    holder = [state]
    del state  # donated on the first call

    def step() -> jax.Array:
        holder[0], metrics = compiled(holder[0], batch)
        return metrics["loss"]

    losses, _, timing = measure_steps(step, lambda: jax.block_until_ready(holder[0]), quick)
    return _step_row(problem, "jax.jit", device, timing, compile_s, frameworks.jax_step_memory(compiled), losses)


STEP_CONTENDERS: dict[str, Callable[[Problem, str, bool], dict]] = {
    "torch eager": torch_eager,
    "torch.compile": torch_compiled,
    "jax.jit": jax_jit,
}


def _step_row(problem: Problem, contender: str, device: str, timing: Timing, compile_s, memory: dict, losses: list[float]) -> dict:
    size, config = problem.size, problem.config
    detail = (f"multi-task model ({len(config.tasks)} regression heads + masked-token head, d_ff {config.d_ff}, "
              f"{config.n_heads} heads), one fixed prepared batch, AdamW lr {OPTIMIZER.learning_rate} "
              f"wd {OPTIMIZER.weight_decay}, float32, dropout 0")
    return result_row(
        STEP, size.describe(), contender, device, timing, items=size.batch, unit="samples/s",
        flops=train_step_flops(config, size.batch, size.length), compile_s=compile_s, peak_memory=memory,
        detail=detail, steps_per_s=1.0 / timing.median_s, warmup_losses=losses,
    )


# -- trainer_overhead ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Backend:
    """One backend's pieces for the overhead epochs."""

    make_loader: Callable  # the backend's data.make_loader
    to_device: Callable[[dict], Any]  # a prepared numpy batch -> the step's batch, as the Trainer's
    step: Callable[[Any], None]  # one optimizer step of the bare loops' own copy of the model
    wait: Callable[[], None]  # until the bare loops' queued work is done
    trainer: Callable[[list], Any]  # a Trainer of the same initial weights, with these callbacks
    wait_for: Callable[[Any], None]  # until a trainer's queued work is done


def torch_backend(problem: Problem, device: str) -> Backend | None:
    dev = frameworks.torch_device(device)
    if dev is None:
        return None
    bare = torch_trainer(problem, dev)  # the bare loops drive its model and optimizer themselves
    sync = frameworks.torch_sync(dev) or (lambda: None)
    return Backend(torch_impl.data.make_loader, lambda prepared: torch_impl.models.as_batch(prepared, dev),
                   torch_train_step(bare.model, bare.optimizer), sync,
                   lambda callbacks: torch_trainer(problem, dev, callbacks), lambda _: sync())


def jax_backend(problem: Problem, device: str) -> Backend | None:
    dev = frameworks.jax_device(device)
    if dev is None:
        return None
    bare = jax_trainer(problem, dev)  # the bare loops drive its state and jitted step themselves
    holder = [bare.state]

    def step(batch: dict) -> None:
        holder[0], _ = bare.train_step(holder[0], batch)

    return Backend(jax_impl.data.make_loader, lambda prepared: jax.device_put(jax_impl.models.as_batch(prepared), dev),
                   step, lambda: jax.block_until_ready(holder[0]), lambda callbacks: jax_trainer(problem, dev, callbacks),
                   lambda trainer: jax.block_until_ready(trainer.state))


def epoch_variants(backend: Backend, problem: Problem, collated: list, log_dir: Path) -> dict[str, Callable[[], None]]:
    """One epoch over ``collated`` (the backend's loader output) each way; each returns when its
    device work is done."""
    preparer = BatchPreparer(problem.config)
    epochs = itertools.count()

    def bare_loop() -> None:
        epoch = next(epochs)  # as the Trainer: the token masks of batch i of epoch e are drawn alike
        for index, batch in enumerate(collated):
            backend.step(backend.to_device(preparer(batch, epoch, index, train=True)))
        backend.wait()

    prepared = [backend.to_device(preparer(batch, 0, index, train=True)) for index, batch in enumerate(collated)]

    def steps_only() -> None:
        for batch in prepared:
            backend.step(batch)
        backend.wait()

    def fit(callbacks: list) -> Callable[[], None]:
        trainer = backend.trainer(callbacks)

        def one_epoch() -> None:
            trainer.fit(collated, num_epochs=trainer.epoch + 1)
            backend.wait_for(trainer)

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
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            variants[name]()
            samples[name].append(time.perf_counter() - start)
    return samples


def overhead_rows(problem: Problem, device: str, ctx: BenchContext, jax_compile_s: float | None) -> list[dict]:
    size = problem.size
    train = LazyDataset(ctx.data_dir, split="train")
    limit = QUICK_OVERHEAD_BATCHES if ctx.quick else OVERHEAD_BATCHES[device]
    whole = len(train) // size.batch  # >= 1: make_problem checked the split holds a batch
    n_batches = whole if limit is None else min(limit, whole)
    dataset = Subset(train, range(n_batches * size.batch))
    rounds = QUICK_ROUNDS if ctx.quick else ROUNDS
    common = (f"; {n_batches} pre-collated batches, the same for every variant (collation and file reads excluded: "
              f"see 'data'), padded (or cut) to {size.length} tokens; {size.describe()}; median of {rounds} interleaved "
              "rounds after one warm-up epoch each (compilation)")
    rows = []
    with tempfile.TemporaryDirectory() as log_dir:
        for contender, make_backend, compile_s in (("torch eager", torch_backend, None), ("jax.jit", jax_backend, jax_compile_s)):
            if contender not in ctx.contenders:
                continue
            workload = {v: f"{v}: epoch of {n_batches} x {size.batch} molecules ({size.name} model)" for v in VARIANTS}
            backend = make_backend(problem, device)
            if backend is None:
                reason = f"{FRAMEWORK[contender]} has no {device} device here"
                rows += [skipped_row(OVERHEAD, workload[v], contender, device, reason) for v in VARIANTS]
                continue
            loader = backend.make_loader(dataset, size.batch, seed=0, drop_last=True,
                                         buckets=(size.length,), max_length=size.length)
            samples = interleaved(epoch_variants(backend, problem, list(loader), Path(log_dir) / contender), rounds)
            for variant, extra in overhead_stats(samples).items():
                rows.append(result_row(
                    OVERHEAD, workload[variant], contender, device, Timing.from_samples(samples[variant]),
                    items=n_batches * size.batch, unit="samples/s", compile_s=compile_s,
                    detail=DETAILS[variant] + common, **extra,
                ))
            frameworks.release_memory()
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
            stats[variant] = {"overhead_pct": 100 * (paired - 1), "overhead_pct_of_minima": 100 * (min(seconds) / min(base) - 1)}
        elif variant == STEPS_ONLY:
            stats[variant] = {"preparation_pct": 100 * (1 - paired)}
        else:
            stats[variant] = {}
    return stats
