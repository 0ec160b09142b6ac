"""The train step of ``ml-patterns compare``'s model, every contender, with its fraction of the
matmul peak (MFU): the figure the next change to that model or its step is judged by.

The model, batch size and padding ladder are compare's (``CompareSettings``' defaults, the ladder
fitted to its batches); the batch is the first
64 training molecules padded to the length most of compare's length-grouped batches get (the most
common padded length of an epoch), so the step measured is compare's typical one. Each row also
carries the padding utilization of compare's batches (``ml_patterns.samplers.padding_utilization``):
the real share of the token positions and of the attention entries, for random and for
length-grouped batches; what the step computes beyond that is padding.
"""

from __future__ import annotations

import collections
import dataclasses

import torch_impl.molecules.models
import torch_impl.state
from ml_patterns.collate import padded_length
from ml_patterns.data import LazyDataset
from ml_patterns.molecules.prepare import read_manifest
from ml_patterns.samplers import padding_utilization, sequence_lengths
from ml_patterns_app.compare.settings import CompareSettings

from .common import BenchContext
from .models import ModelSize, Problem, first_batch
from .training import train_step_rows


def run(ctx: BenchContext) -> list[dict]:
    settings = CompareSettings()
    manifest = read_manifest(ctx.data_dir)
    train = LazyDataset(ctx.data_dir, split="train")
    lengths = sequence_lengths(train)
    # compare's batches either way, each padded to the ladder compare fits to them.
    samplers = {
        "random batches": dataclasses.replace(settings, group_by_length=False).train_sampler(train),
        "length-grouped batches": settings.train_sampler(train),
    }
    train.close()
    ladders = {name: settings.buckets(manifest, sampler, lengths) for name, sampler in samplers.items()}
    utilization = {
        name: padding_utilization(
            sampler, lengths, buckets=ladders[name], max_length=ladders[name][-1], epochs=range(settings.epochs)
        )
        for name, sampler in samplers.items()
    }
    grouped, buckets = samplers["length-grouped batches"], ladders["length-grouped batches"]
    counts = collections.Counter(
        padded_length(int(min(lengths[b].max(), buckets[-1])), None, buckets) for b in grouped.batches(0)
    )
    length = counts.most_common(1)[0][0]
    config = settings.model_config(manifest, max_len=buckets[-1])
    size = ModelSize("compare", settings.d_model, settings.n_layers, settings.n_heads, settings.batch_size, length)
    weights = torch_impl.state.to_numpy(torch_impl.molecules.models.build_model(config))
    problem = Problem("multitask", size, config, weights, first_batch(ctx.data_dir, config, size.batch, length))
    rows = []
    for device in ctx.devices:
        for row in train_step_rows(problem, device, ctx):
            row["benchmark"] = "compare_model"
            row["padding_utilization"] = utilization
            row["detail"] = (
                f"compare's model and batch at its most common padded length {length} "
                f"({counts[length]} of {sum(counts.values())} batches); real tokens / attention entries: "
                + ", ".join(f"{k} {v['token']:.0%} / {v['attention']:.0%}" for k, v in utilization.items())
                + (f"; {row['detail']}" if row.get("detail") else "")
            )
            rows.append(row)
    return rows
