"""Data-parallel scaling: the molecule multi-task model trained by each backend's ``Trainer`` with 1, 2
and 4 workers (torch: DDP processes over gloo; JAX: the devices of one mesh, simulated on a CPU),
the same global batch (strong scaling). Each row: samples/s of a steady epoch, and the scaling
efficiency ``throughput(N) / (N * throughput(1))``.

On a CPU the workers share the cores the bench pinned: each torch rank gets ``threads // N``
intra-op threads, and JAX's simulated devices share one XLA thread pool. These rows therefore
measure what data parallelism costs on this machine (all-reduces, padding rows, one process per
rank), not what it gains on N devices of their own; run it where N GPUs exist for that (not done
here yet: GPU rows are skipped). Every N runs in a subprocess of its own (``JAX_NUM_CPU_DEVICES``
must be set before JAX starts).

    python -m ml_patterns_bench.distributed BACKEND N DATA QUICK THREADS OUT.json    (what ``run`` starts)
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import BenchContext, Timing, result_row, skipped_row

WORLDS = (1, 2, 4)
BATCH, EPOCHS = 64, 3  # the first epoch compiles (JAX) and warms up: timed are the others
CONTENDER = {"torch": "torch eager", "jax": "jax.jit"}
WORKER = {"torch eager": "process", "jax.jit": "device"}  # what each of the N workers is
TIMEOUT_S = 900


def run(ctx: BenchContext) -> list[dict]:
    rows = []
    workload = f"molecule multitask, global batch {BATCH}"
    for device in ctx.devices:
        for backend, contender in CONTENDER.items():
            if contender not in ctx.contenders:
                continue
            if device != "cpu":
                rows.append(skipped_row("data_parallel", workload, contender, device, "runs on CPU only so far"))
                continue
            measured = {n: _measure(backend, n, ctx) for n in WORLDS}
            rows.extend(scaling_rows(workload, contender, measured))
    return rows


def scaling_rows(workload: str, contender: str, measured: dict[int, dict]) -> list[dict]:
    """A row per N from ``{N: {"epoch_s": [...], "samples": int}}``, with the scaling efficiency
    against N=1 (the same global batch: ideal is N times N=1's samples/s)."""
    rows, base = [], None
    for n, result in measured.items():
        timing = Timing.from_samples(result["epoch_s"])
        throughput = result["samples"] / timing.median_s
        base = base or throughput
        efficiency = throughput / (n * base)
        rows.append(
            result_row(
                "data_parallel", f"{workload}, N={n}", contender, "cpu", timing,
                items=result["samples"], unit="samples/s", world_size=n, scaling_efficiency=efficiency,
                detail=f"{n} {WORKER[contender]}(s); "
                f"scaling efficiency {efficiency:.0%} (ideal: {n}x the N=1 throughput)",
            )
        )  # fmt: skip
    return rows


def _measure(backend: str, n: int, ctx: BenchContext) -> dict:
    env = {**os.environ, **importlib.import_module(f"{backend}_impl.environment").process_environment(n, "cpu")}
    command = [
        sys.executable,
        "-m",
        "ml_patterns_bench.distributed",
        backend,
        str(n),
        str(ctx.data_dir),
        str(int(ctx.quick)),
    ]
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        subprocess.run([*command, str(ctx.threads), str(out)], check=True, env=env, timeout=TIMEOUT_S)
        return json.loads(out.read_text())


def train(backend: str, data: Path, quick: bool, distributed=None) -> dict:
    """One run (rank 0's view under torch): ``{"epoch_s": steady epochs' seconds, "samples": per epoch}``."""
    from ml_patterns.data import LazyDataset, Subset
    from ml_patterns.molecules.batches import BatchPreparer
    from ml_patterns.molecules.config import ModelConfig
    from ml_patterns.molecules.prepare import read_manifest
    from ml_patterns.optim import OptimizerConfig

    impl = importlib.import_module(f"{backend}_impl")
    for module in ("data", "molecules.models", "training"):
        importlib.import_module(f"{backend}_impl.{module}")
    config = ModelConfig.from_manifest(
        read_manifest(data), architecture="multitask", d_model=64, n_heads=4, n_layers=2, d_ff=128,
        max_len=64, dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    molecules = 2 * BATCH if quick else 8 * BATCH
    train_set = Subset(LazyDataset(data, split="train"), range(molecules))
    trainer = impl.training.Trainer(
        impl.molecules.models.build_model(config), OptimizerConfig("adamw", learning_rate=1e-3, weight_decay=0.01),
        batch_transform=BatchPreparer(config), distributed=distributed,
    )  # fmt: skip
    trainer.fit(impl.data.make_loader(train_set, BATCH, buckets=(64,), max_length=64), None, EPOCHS)
    return {"epoch_s": [t["train_s"] for t in trainer.epoch_times[1:]], "samples": molecules}


def _main(backend: str, n: int, data: Path, quick: bool, threads: int, out: Path) -> None:
    runtime = importlib.import_module(f"{backend}_impl.runtime")
    runtime.run_data_parallel(_train_and_write, n, "cpu", backend, data, quick, threads, out)


def _train_and_write(context, backend: str, data: Path, quick: bool, threads: int, out: Path) -> None:
    """One worker's run (``context``: None for the plain one-device trainer): the bench's threads
    shared among the processes, rank 0 writing the result."""
    runtime = importlib.import_module(f"{backend}_impl.runtime")
    runtime.set_threads(max(1, threads // (1 if context is None else context.world_size)))
    result = train(backend, data, quick, context)
    if context is None or context.is_main:
        out.write_text(json.dumps(result))


if __name__ == "__main__":
    from . import distributed as module  # noqa: PLW0406 (spawned ranks import it by this name)

    name, world, directory, quick_flag, thread_count, path = sys.argv[1:7]
    module._main(name, int(world), Path(directory), quick_flag == "1", int(thread_count), Path(path))
