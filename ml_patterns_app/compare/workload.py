"""What a compare worker trains: a ``Workload`` built in the worker, for its backend.

A workload gives the worker the model (its initial weights already the run's shared ones), the
batch preparation, the training and validation loaders, and how to score the trained model. The
worker (``worker``) does the rest the same way for every workload: the float64 anchor, torch.compile,
the FLOP count, the Trainer, the timings, the memory. Two workloads exist:

- the molecule models (``molecule_workload``, this module): our factories; the first worker builds
  the model and writes the initial weights, the others load them;
- your own pair (``pair.pair_workload``): your factories, the initial weights transferred from torch
  to NNX by the porting toolkit before any worker starts (``pair.write_initial_weights``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ml_patterns.data import LazyDataset, Subset
from ml_patterns.distributed import shard_rows
from ml_patterns.molecules.batches import BatchPreparer
from ml_patterns.molecules.config import MLM_TASK, ModelConfig
from ml_patterns.molecules.metrics import SplitScores, train_class_counts
from ml_patterns.molecules.prepare import read_manifest
from ml_patterns.samplers import LengthGroupedSampler, padding_utilization, sequence_lengths
from ml_patterns_app.compare.settings import WorkerJob


@dataclasses.dataclass
class Workload:
    """One worker's training job, ready for the Trainer.

    ``transform``: the Trainer's ``batch_transform`` (None: batches as the loader yields them);
    ``pad_rows``: ``Trainer(pad_batches_to=...)``; ``first_batch()``: a training batch as the
    model's ``compute_loss`` takes it (numpy; the FLOP count's); ``record``: fields of ``WorkerResult`` that only
    this workload knows (padding, truncation, the data's checksum); ``test_metrics(model)``: the
    trained model's scores, ``{name: value}``; ``save_trained(model, path)``: writes the trained
    weights as a portable checkpoint (``ml-patterns predict`` reads them), None where the model cannot."""

    model: Any
    transform: Callable | None
    train_loader: Iterable
    val_loader: Iterable | None
    steps_per_epoch: int
    samples_per_epoch: int
    pad_rows: int | None
    first_batch: Callable[[], Any]
    record: dict
    test_metrics: Callable[[Any], dict[str, float]]
    save_trained: Callable[[Any, Path], Any] | None = None


def molecule_workload(impl, runtime, job: WorkerJob, devices: int, device) -> Workload:
    """Our molecule model on the prepared dataset ``job.data`` (``job.settings``: its size, batches)."""
    data = Path(job.data)
    settings = job.settings
    manifest = read_manifest(data)
    train = first_molecules(LazyDataset(data, split="train"), settings.max_train_molecules)
    val = first_molecules(LazyDataset(data, split="val"), settings.max_eval_molecules)
    test = first_molecules(LazyDataset(data, split="test"), settings.max_eval_molecules)
    # Batches are padded to a short ladder of lengths fitted to this run's batches (each length is a
    # jax.jit program); the position table covers the longest rung.
    sampler = settings.train_sampler(train)
    lengths = sampler.lengths if isinstance(sampler, LengthGroupedSampler) else sequence_lengths(train)
    buckets = settings.buckets(manifest, sampler, lengths)
    config = settings.model_config(manifest, max_len=buckets[-1])
    collate = {"buckets": buckets, "max_length": buckets[-1], "group_by_length": settings.group_by_length}
    loader = impl.data.make_loader
    train_loader = loader(train, settings.batch_size, seed=settings.seed, **collate)
    # Rows every batch is padded to, if the backend pads (a program per batch shape: the short last
    # batch runs the full batches' one); the padding rows count as padding (the batch size rounded
    # up to the devices': the rows the backend computes).
    pad_rows = runtime.padded_batch_rows(settings.batch_size)
    computed = None if pad_rows is None else devices * shard_rows(pad_rows, devices)
    padding = padding_utilization(
        sampler, lengths, buckets=buckets, max_length=buckets[-1], epochs=range(settings.epochs), rows=computed
    )
    weights = Path(job.weights)
    if job.write_weights:  # the first worker: the one set of initial weights, for every backend
        model = impl.molecules.models.build_model(config)
        model.save(weights)
    else:
        model = impl.molecules.models.load_model(weights)
    transform = BatchPreparer(config)

    def test_metrics(trained) -> dict[str, float]:
        test_loader = loader(test, settings.batch_size, shuffle=False, **collate)
        return molecule_test_metrics(runtime, trained, device, config, test_loader, manifest)

    return Workload(
        model=model,
        transform=transform,
        train_loader=train_loader,
        val_loader=loader(val, settings.batch_size, shuffle=False, **collate),
        steps_per_epoch=-(-len(train) // settings.batch_size),
        samples_per_epoch=len(train),
        pad_rows=pad_rows,
        # From a loader of its own: the run's sampler resumes where a pass over it stopped.
        first_batch=lambda: transform(
            next(iter(loader(train, settings.batch_size, seed=settings.seed, **collate))), 0, 0, train=True
        ),
        record={
            "padding": {
                "sampler": type(sampler).__name__,
                "buckets": list(buckets),
                "pad_batches_to": pad_rows,
                **padding,
            },
            "truncated": {
                name: sum(len(r["input_ids"]) > buckets[-1] for r in split)
                for name, split in (("train", train), ("val", val), ("test", test))
            },
            "max_length": buckets[-1],
        },
        test_metrics=test_metrics,
        save_trained=lambda trained, path: trained.save(path),
    )


def first_molecules(split: LazyDataset, limit: int):
    """The first ``limit`` molecules of ``split`` (``limit`` 0: all of them)."""
    return Subset(split, range(min(limit, len(split)))) if limit else split


def molecule_test_metrics(
    runtime, model, device, config: ModelConfig, loader, manifest: dict | None = None
) -> dict[str, float]:
    """Each target's metrics and baselines over its labelled test rows (``ml_patterns.molecules.metrics``:
    MAE and R2, or accuracy and ROC-AUC), and token accuracy, over the test split."""
    prepare = BatchPreparer(config)
    scores = SplitScores(config)
    correct = total = 0
    for index, collated in enumerate(loader):
        batch = prepare(collated, 0, index, train=False)
        if config.architecture == "autoencoder":
            logits = runtime.predict(model, batch, device)["logits"]
            hits = (logits.argmax(-1) == batch["decoder_targets"]) & batch["decoder_mask"]
            correct, total = correct + int(hits.sum()), total + int(batch["decoder_mask"].sum())
            continue
        scores.add(batch, runtime.predict(model, batch, device))
        if config.has_mlm_head:
            logits = runtime.predict(model, {**batch, "input_ids": batch["mlm_input_ids"]}, device, MLM_TASK)[MLM_TASK]
            hits = (logits.argmax(-1) == batch["mlm_targets"]) & batch["mlm_mask"]
            correct, total = correct + int(hits.sum()), total + int(batch["mlm_mask"].sum())
    metrics = scores.metrics(train_class_counts(manifest or {}))
    name = "reconstruction token accuracy" if config.architecture == "autoencoder" else "masked-token accuracy"
    metrics[name] = correct / max(total, 1)
    return metrics
