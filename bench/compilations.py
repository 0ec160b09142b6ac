"""How many shapes (so JAX compilations) one epoch makes: buckets against plain pad-to-longest.

One shuffled epoch of the default dataset's train split is collated (``jax_impl.collate``) and fed
to a jitted next-token step (embedding -> linear -> masked cross-entropy, value and gradient): a
real step whose compilations are counted by tracing (jit traces exactly once per new input
signature) and whose epoch time includes them. Both backends collate to the same shapes (parity
tests), so the shape counts hold for torch too; there they cost nothing in eager mode, and a
recompilation each under ``torch.compile`` without dynamic shapes. Runs on each device of the run
that JAX has (batches copied there before timing).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl import runtime
from jax_impl.collate import collate_molecules
from jax_impl.losses import masked_cross_entropy
from ml_patterns.collate import dataset_buckets
from ml_patterns.data import LazyDataset
from ml_patterns.molecules.prepare import read_manifest
from ml_patterns.samplers import BatchSampler

from .common import BenchContext, skipped_row, time_call

WIDTH = 64


def run(ctx: BenchContext) -> list[dict]:
    rows = []
    for device in ctx.devices:
        dev = runtime.device(device)
        if dev is None:
            rows.append(
                skipped_row(
                    "compilations",
                    "one epoch of the default train split",
                    "jax.jit",
                    device,
                    f"jax has no {device} device here",
                )
            )
            continue
        rows += _device_rows(ctx, dev, device)
    return rows


def _device_rows(ctx: BenchContext, dev: jax.Device, device: str) -> list[dict]:
    quick = ctx.quick
    dataset = LazyDataset(ctx.data_dir, split="train")
    vocab = read_manifest(ctx.data_dir)["vocab_size"]
    ladder = dataset_buckets(ctx.data_dir)
    strategies = {
        "pad to longest": {},
        "pad_to_multiple_of=8": {"pad_to_multiple_of": 8},
        f"buckets {list(ladder)} (dataset_buckets)": {"buckets": ladder},
    }
    rows = []
    for batch_size in (256,) if quick else (32, 256):
        sampler = BatchSampler(len(dataset), batch_size, shuffle=True, seed=0, drop_last=True)
        records = [[dataset[i] for i in indices] for indices in sampler]
        for name, padding in strategies.items():
            batches = jax.device_put([collate_molecules(batch, **padding) for batch in records], dev)
            step, traces = _counting_step()
            params = jax.device_put(_params(vocab), dev)

            def epoch(step=step, params=params, batches=batches) -> None:
                for batch in batches:
                    loss, _ = step(params, batch["input_ids"], batch["attention_mask"])
                jax.block_until_ready(loss)

            timing = time_call(epoch, repeats=1, warmup=0)  # the first epoch: compilations included
            steady = time_call(epoch, repeats=1 if quick else 3, warmup=0)  # every shape compiled
            shapes = {b["input_ids"].shape for b in batches}
            real = sum(int(b["attention_mask"].sum()) for b in batches)
            padded = sum(b["input_ids"].size for b in batches)
            rows.append(
                {
                    "benchmark": "compilations",
                    "workload": f"one epoch of the default train split, batch {batch_size}, drop_last",
                    "contender": name,
                    "device": device,
                    "timing": timing.as_dict(),
                    "throughput": {"value": len(batches) / timing.median_s, "unit": "steps/s (compiles included)"},
                    "compile_s": timing.median_s - steady.median_s,  # first epoch minus a compiled one
                    "distinct_shapes": len(shapes),
                    "compilations": traces[0],
                    "padding_fraction": 1 - real / padded,
                    "steady_epoch_s": steady.median_s,
                    "detail": f"{len(batches)} steps; lengths {sorted({s[1] for s in shapes})}",
                }
            )
    dataset.close()
    return rows


def _params(vocab: int) -> dict:
    rng = np.random.default_rng(0)
    return {
        "embedding": jnp.asarray(rng.normal(0, 0.02, (vocab, WIDTH)), jnp.float32),
        "head": jnp.asarray(rng.normal(0, 0.1, (WIDTH, vocab)), jnp.float32),
    }


def _counting_step():
    traces = [0]

    def loss_fn(params, input_ids, attention_mask):
        traces[0] += 1  # Python runs here only while tracing: once per compilation
        hidden = params["embedding"][input_ids[:, :-1]]  # [B, L-1, WIDTH]
        logits = hidden @ params["head"]  # [B, L-1, vocab]
        return masked_cross_entropy(logits, input_ids[:, 1:], attention_mask[:, 1:])

    return jax.jit(jax.value_and_grad(loss_fn)), traces
