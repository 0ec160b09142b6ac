"""LazyDataset random-access reads and BatchSampler cost (framework-free: both backends share them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.common import time_call
from ml_patterns.data import BatchSampler, LazyDataset


def run(data_dir: Path, quick: bool) -> list[dict]:
    rows = []
    reads = 2_000 if quick else 20_000
    repeats = 3 if quick else 7

    dataset = LazyDataset(data_dir)
    order = np.random.default_rng(0).integers(0, len(dataset), size=reads)

    def random_reads() -> None:
        for i in order:
            dataset[i]

    def cold_random_reads() -> None:
        # A fresh dataset each time: index parsing and shard opening are inside the timing.
        fresh = LazyDataset(data_dir)
        for i in order:
            fresh[i]
        fresh.close()

    for workload, fn in (("random reads, shards open", random_reads), ("random reads, from construction", cold_random_reads)):
        timing = time_call(fn, repeats=repeats, warmup=1)
        rows.append(_row("lazy_dataset", workload, timing, reads, "records/s", f"{len(dataset)} records, {reads} reads"))
    dataset.close()

    for n in (5_000, 1_000_000):
        sampler = BatchSampler(n, 256, shuffle=True, seed=0)

        def one_epoch() -> None:
            for _ in sampler:
                pass

        timing = time_call(one_epoch, repeats=repeats, warmup=1)
        rows.append(_row("batch_sampler", f"one epoch, n={n:,}, batch 256", timing, n, "indices/s", "shuffled"))
    return rows


def _row(benchmark: str, workload: str, timing, items: int, unit: str, detail: str) -> dict:
    return {
        "benchmark": benchmark,
        "workload": workload,
        "contender": "numpy (shared by both backends)",
        "device": "cpu",
        "timing": timing.as_dict(),
        "throughput": {"value": items / timing.median_s, "unit": unit},
        "detail": detail,
    }
