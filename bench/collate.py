"""Collate cost per backend, against the seed's pure-Python list padding (the baseline below), and
the copy of a collated batch to each device of the run.

Records are read from the dataset before timing: only collating is timed. Each timed call
collates the same shuffled batches of 256 real molecules; the figure is per batch. torch runs twice:
with the process's intra-op threads (collate in the main process) and with one thread, as in a
``DataLoader`` worker; on a small busy machine, waking a thread pool for a 50k-element fill costs
more than the fill. Collating is host work, so those rows are the CPU's whatever ``--device``
says; the copy to the device (``runtime.to_device``, as the trainers do it) is timed per device.
"""

from __future__ import annotations

import numpy as np
import torch

from jax_impl.collate import collate_molecules as jax_collate
from ml_patterns.data import LazyDataset
from ml_patterns.samplers import BatchSampler
from torch_impl.collate import collate_molecules as torch_collate

from .common import BenchContext, result_row, time_call
from .harness import RUNTIMES

BATCH_SIZE = 256


def python_padding(batch: list[dict], to_array, pad_token_id: int = 0) -> dict:
    """The baseline: pad Python lists to the longest record, then one conversion per output."""
    longest = max(len(record["input_ids"]) for record in batch)
    input_ids, attention_mask = [], []
    for record in batch:
        ids = list(record["input_ids"])
        padding = longest - len(ids)
        input_ids.append(ids + [pad_token_id] * padding)
        attention_mask.append([True] * len(ids) + [False] * padding)
    names = list(batch[0]["label"])
    labels = {name: [record["label"][name] for record in batch] for name in names}
    return {
        "input_ids": to_array(input_ids, "int"),
        "attention_mask": to_array(attention_mask, "bool"),
        "labels": {name: to_array(values, "float") for name, values in labels.items()},
    }


_TORCH_DTYPES = {"int": torch.int64, "bool": torch.bool, "float": torch.float32}
_NUMPY_DTYPES = {"int": np.int32, "bool": np.bool_, "float": np.float32}


def _torch_array(values, kind):
    return torch.tensor(values, dtype=_TORCH_DTYPES[kind])


def _numpy_array(values, kind):
    return np.array(values, dtype=_NUMPY_DTYPES[kind])


def run(ctx: BenchContext) -> list[dict]:
    quick = ctx.quick
    dataset = LazyDataset(ctx.data_dir)
    n_batches = 4 if quick else 16
    sampler = BatchSampler(len(dataset), BATCH_SIZE, shuffle=True, seed=0, drop_last=True)
    batches = [[dataset[i] for i in indices] for indices, _ in zip(sampler, range(n_batches))]
    dataset.close()
    tokens = sum(len(r["input_ids"]) for batch in batches for r in batch)
    repeats = 5 if quick else 15

    threads = torch.get_num_threads()
    contenders = {
        f"torch, {threads} intra-op threads (main process)": (threads, _torch_pair()),
        # What a DataLoader worker runs with: each worker sets torch.set_num_threads(1).
        "torch, 1 thread (DataLoader worker)": (1, _torch_pair()),
        "jax (numpy)": (threads, _numpy_pair()),
    }
    rows = []
    for backend, (n_threads, pair) in contenders.items():
        baseline_s = None
        for name, collate in pair:

            def collate_all(collate=collate) -> None:
                for batch in batches:
                    collate(batch)

            torch.set_num_threads(n_threads)
            try:
                timing = time_call(collate_all, repeats=repeats, warmup=1)
            finally:
                torch.set_num_threads(threads)
            per_batch = timing.median_s / n_batches
            baseline_s = baseline_s or per_batch
            rows.append(
                {
                    "benchmark": "collate",
                    "workload": f"{backend}: batch {BATCH_SIZE} of real molecules, pad to longest",
                    "contender": name,
                    "device": "cpu",
                    "timing": timing.as_dict(),
                    "throughput": {"value": tokens / timing.median_s, "unit": "tokens/s"},
                    "microseconds_per_batch": per_batch * 1e6,
                    "speedup_vs_baseline": baseline_s / per_batch,
                    "detail": f"{n_batches} batches per timed call, {tokens / n_batches:.0f} real tokens per batch; "
                    "host work (CPU) for every device",
                }
            )
    return rows + transfer_rows(ctx, batches, repeats)


def transfer_rows(ctx: BenchContext, batches: list[list[dict]], repeats: int) -> list[dict]:
    """The copy of collated batches to each device, per framework, as its trainer makes it."""
    collated = [jax_collate(batch) for batch in batches]
    nbytes = sum(array.nbytes for batch in collated for array in _leaves(batch))
    rows = []
    for device in ctx.devices:
        for framework, runtime in RUNTIMES.items():
            dev = runtime.device(device)
            if dev is None:
                continue

            def copy_all(runtime=runtime, dev=dev) -> None:
                for batch in collated:
                    moved = runtime.to_device(batch, dev)
                runtime.wait(dev, moved)

            timing = time_call(copy_all, repeats=repeats, warmup=1)
            rows.append(
                result_row(
                    "collate",
                    f"copy {len(collated)} collated batches to the device",
                    f"{framework}_impl.runtime.to_device",
                    device,
                    timing,
                    items=nbytes / 2**20,
                    unit="MiB/s",
                    detail="numpy batch -> the framework's arrays on the device",
                )
            )
    return rows


def _leaves(tree: dict):
    for value in tree.values():
        yield from _leaves(value) if isinstance(value, dict) else [value]


def _torch_pair():
    return (
        ("baseline: Python list padding + torch.tensor", lambda b: python_padding(b, _torch_array)),
        ("torch_impl.collate_molecules", torch_collate),
    )


def _numpy_pair():
    return (
        ("baseline: Python list padding + np.array", lambda b: python_padding(b, _numpy_array)),
        ("jax_impl.collate_molecules (numpy)", jax_collate),
    )
