"""The measurements behind ``gpu_check``, each on a device given (a GPU, or the CPU for its dry run),
on a small molecule model: host syncs in a step, the attention kernel, a matmul under a precision
policy, a resumed run against the uninterrupted one."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import jax_impl.data
import jax_impl.molecules.models
import jax_impl.runtime
import jax_impl.training
import torch_impl.data
import torch_impl.molecules.models
import torch_impl.runtime
import torch_impl.training
from ml_patterns import parity
from ml_patterns.data import LazyDataset, Subset
from ml_patterns.molecules.batches import BatchPreparer
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.optim import OptimizerConfig

IMPLS = {"torch": torch_impl, "jax": jax_impl}
RUNTIMES = {"torch": torch_impl.runtime, "jax": jax_impl.runtime}
OPTIMIZER = OptimizerConfig("adamw", learning_rate=1e-3, weight_decay=0.01)
MOLECULES, BATCH = 64, 16


def small_trainer(framework: str, data: Path, manifest: dict, device, dropout: float = 0.0):
    """``(trainer, loader)``: a small multi-task model on ``device``, 64 training molecules in batches of 16."""
    impl = IMPLS[framework]
    config = ModelConfig.from_manifest(
        manifest, d_model=32, n_heads=2, n_layers=1, d_ff=64, max_len=64, dropout=dropout, seed=1
    )
    torch.manual_seed(0)  # torch's dropout draws from the global generators
    trainer = impl.training.Trainer(
        impl.molecules.models.build_model(config), OPTIMIZER, device=device, batch_transform=BatchPreparer(config)
    )
    molecules = Subset(LazyDataset(data, split="train"), range(MOLECULES))
    return trainer, impl.data.make_loader(molecules, BATCH, seed=3, buckets=(32, 64))


def step_syncs(framework: str, data: Path, manifest: dict, device) -> str | None:
    """None when ``framework``'s training steps, in two epochs after a warm-up epoch (which compiles
    every shape), made no host sync under the runtime's ``step_sync_guard`` (on a GPU the
    framework's own check; on the CPU, which never syncs, its analogue), else what synced."""
    trainer, loader = small_trainer(framework, data, manifest, device)
    trainer.fit(loader, num_epochs=1)
    try:
        with RUNTIMES[framework].step_sync_guard(trainer):
            trainer.fit(loader, num_epochs=2)
    except Exception as error:  # each guard raises its own error type for a refused sync
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return None


def attention_kernels(data: Path, manifest: dict, device: torch.device) -> list[str]:
    """The scaled-dot-product-attention ops torch dispatched in one training loss and its backward
    on ``device`` (e.g. ``aten::_scaled_dot_product_efficient_attention``), from its profiler."""
    trainer, loader = small_trainer("torch", data, manifest, device)
    host = trainer.batch_transform(next(iter(loader)), 0, 0, train=True)
    batch = torch_impl.training.to_device(host, device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        trainer.model.compute_loss(batch).backward()
        torch_impl.runtime.wait(device)
    names = {event.key for event in profile.key_averages()}
    return sorted(name for name in names if "scaled_dot_product" in name or "attention" in name.lower())


def matmul_under(framework: str, policy: str, device, kind: str) -> dict:
    """A float32 matmul under ``policy``: its largest error against float64 over 1024-long dot
    products, relative to ``|a| @ |b|`` (the scale a dot product's rounding error grows with: about
    float32's 6e-8 for float32 arithmetic, TF32's 5e-4 where TF32 ran), and the GFLOP/s of a large
    one (8192 on a GPU, 1024 on the CPU)."""
    rng = np.random.default_rng(0)
    small = [rng.standard_normal((256, 1024), dtype=np.float32), rng.standard_normal((1024, 256), dtype=np.float32)]
    reference = small[0].astype(np.float64) @ small[1].astype(np.float64)
    scale = np.abs(small[0].astype(np.float64)) @ np.abs(small[1].astype(np.float64))
    n = 8192 if kind == "gpu" else 1024
    large = [rng.standard_normal((n, n), dtype=np.float32) for _ in range(2)]
    runtime = RUNTIMES[framework]
    with runtime.precision_policy(policy):  # each program traced and compiled under it
        multiply_small = runtime.matmul(*small, device)[0]
        product = runtime.to_numpy(multiply_small())
        call, wait, _ = runtime.matmul(*large, device)
        seconds = _median_seconds(call, lambda _: wait())
    error = np.abs(product - reference) / scale
    return {"max_rel_error": float(error.max()), "gflops": 2 * n**3 / seconds / 1e9, "size": n}


def _median_seconds(call, wait, repeats: int = 5) -> float:
    wait(call())  # compiled, kernels loaded
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        wait(call())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def resume_against_uninterrupted(framework: str, data: Path, manifest: dict, device, kind: str) -> dict:
    """Two epochs straight against one, a checkpoint, a new trainer loading it and the second
    epoch (dropout on, so the saved RNG matters): ``{"bit_exact", "max_rel_diff",
    "within_tolerance"`` (the training-history tolerance of ``kind``), ``"state_on_device"}``
    (the resumed optimizer state where the step reads it)."""
    straight, loader = small_trainer(framework, data, manifest, device, dropout=0.1)
    expected = straight.fit(loader, num_epochs=2)["train_loss"]
    first, loader = small_trainer(framework, data, manifest, device, dropout=0.1)
    first.fit(loader, num_epochs=1)
    with tempfile.TemporaryDirectory() as scratch:
        first.save_checkpoint(Path(scratch) / "checkpoint")
        resumed, loader = small_trainer(framework, data, manifest, device, dropout=0.1)
        resumed.load_checkpoint(Path(scratch) / "checkpoint")
    got = resumed.fit(loader, num_epochs=2)["train_loss"]
    diff = max(abs(a - b) / max(abs(a), 1e-30) for a, b in zip(expected, got, strict=True))
    tolerance = parity.tolerance("history", kind)
    return {
        "bit_exact": expected == got,
        "max_rel_diff": diff,
        "within_tolerance": all(
            abs(a - b) <= tolerance.atol + tolerance.rtol * abs(a) for a, b in zip(expected, got, strict=True)
        ),
        "state_on_device": RUNTIMES[framework].optimizer_state_on(resumed, device),
        "losses": {"uninterrupted": expected, "resumed": got},
    }
