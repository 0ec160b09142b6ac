"""LazyDataset random-access reads and BatchSampler cost (framework-free: both backends share them).

Host work that feeds whichever device trains, so it runs on the CPU for every ``--device``.
"""

from __future__ import annotations

import numpy as np

from ml_patterns.data import LazyDataset
from ml_patterns.samplers import BatchSampler

from .common import SHARED, BenchContext, result_row, time_call


def run(ctx: BenchContext) -> list[dict]:
    rows = []
    reads = 2_000 if ctx.quick else 20_000
    repeats = 3 if ctx.quick else 7

    dataset = LazyDataset(ctx.data_dir)
    order = np.random.default_rng(0).integers(0, len(dataset), size=reads)

    def random_reads() -> None:
        for i in order:
            dataset[i]

    def cold_random_reads() -> None:
        # A fresh dataset each time: index parsing and shard opening are inside the timing.
        fresh = LazyDataset(ctx.data_dir)
        for i in order:
            fresh[i]
        fresh.close()

    for workload, fn in (
        ("random reads, shards open", random_reads),
        ("random reads, from construction", cold_random_reads),
    ):
        timing = time_call(fn, repeats=repeats, warmup=1)
        rows.append(
            result_row(
                "lazy_dataset",
                workload,
                SHARED,
                "cpu",
                timing,
                items=reads,
                unit="records/s",
                detail=f"{len(dataset)} records, {reads} reads",
            )
        )
    dataset.close()

    for n in (5_000, 1_000_000):
        sampler = BatchSampler(n, 256, shuffle=True, seed=0)

        def one_epoch(sampler: BatchSampler = sampler) -> None:
            for _ in sampler:
                pass

        timing = time_call(one_epoch, repeats=repeats, warmup=1)
        rows.append(
            result_row(
                "batch_sampler",
                f"one epoch, n={n:,}, batch 256",
                SHARED,
                "cpu",
                timing,
                items=n,
                unit="indices/s",
                detail="shuffled",
            )
        )
    return rows
