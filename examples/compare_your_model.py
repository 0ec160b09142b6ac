"""Compare your own model pair: which backend trains it faster, and do they agree?

    python examples/compare_your_model.py [--contenders eager,compile,jit] [--epochs 3] [--out DIR]

The example CNN of check_your_port.py (images [B, 1, 8, 8] -> 4 classes) and its Flax NNX port,
trained by ``ml_patterns_app.compare.compare_models`` through both Trainers from the same weights
(torch's, moved to the NNX model by the porting toolkit) on the same batches: every step's loss
judged against the float32 noise measured by rerunning torch one ulp off and in float64, the steady
speed, compile time and peak memory of each contender. The command line does the same:

    ml-patterns compare --torch my_models:torch_cnn --jax my_models:nnx_cnn --data my_models:images \
        --torch-loss my_models:torch_loss --jax-loss my_models:jax_loss

Each run is a process of its own that imports what it trains: pass functions defined at the top of
a module (here, this script's own). Replace the models, the batches and the losses with yours.
"""

# expect: ^Verdict: .*they agree numerically

from __future__ import annotations

import argparse
import sys

import numpy as np
import optax
import torch
from check_your_port import NnxNet, TorchNet  # the example CNN and its NNX port (this folder)
from flax import nnx

from ml_patterns_app.compare import compare_models
from ml_patterns_app.compare.settings import LABELS, CompareSettings


def torch_cnn() -> torch.nn.Module:
    return TorchNet()


def nnx_cnn() -> nnx.Module:
    return NnxNet(nnx.Rngs(0))


def images(batches: int = 32, size: int = 32, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The training batches: ``{"images": [B, 1, 8, 8] float32, "labels": [B] int}``, the label
    being the brightest quadrant. The same on every call (both backends call it)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        pictures = rng.normal(size=(size, 1, 8, 8)).astype(np.float32)
        labels = pictures[:, 0].reshape(size, 2, 4, 2, 4).mean(axis=(2, 4)).reshape(size, 4).argmax(1)
        out.append({"images": pictures, "labels": labels})
    return out


def torch_loss(model, batch):
    return torch.nn.functional.cross_entropy(model(batch["images"]), batch["labels"])


def jax_loss(model, batch):
    # flax convolutions take channels last: the port's one layout change, made here.
    logits = model(batch["images"].transpose(0, 2, 3, 1))
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contenders", default="eager,jit", help="of eager, compile, jit (default eager,jit)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    parser.add_argument("--device", default="cpu", help="auto, cpu or gpu (default cpu)")
    parser.add_argument("--out", default="runs/compare-cnn", help="the report folder (default runs/compare-cnn)")
    args = parser.parse_args(argv)

    # No validation batches: BatchNorm's running variance is unbiased in torch and biased in flax,
    # so eval-mode losses differ by design (jax_impl/state.py); training uses the batch's statistics.
    report = compare_models(
        torch_cnn,
        nnx_cnn,
        images,
        torch_loss=torch_loss,
        jax_loss=jax_loss,
        settings=CompareSettings(epochs=args.epochs, learning_rate=1e-3, weight_decay=0.0, seed=0, threads=1),
        contenders=args.contenders.split(","),
        out=args.out,
        device=args.device,
    )
    print()
    for run, speed in report["speed"].items():
        rate = "not measured" if speed["samples_per_s"] is None else f"{speed['samples_per_s']:.0f} samples/s"
        warmup = "not measured" if speed["warmup_s"] is None else f"{speed['warmup_s']:.2f} s"
        print(
            f"{LABELS[run]}: {rate} at steady state, warm-up/compile {warmup}, peak memory "
            f"{speed['peak_memory_bytes'] / 2**20:.0f} MiB ({speed['peak_memory_kind']})"
        )
    print(f"Verdict: {report['verdict']}")
    return 0 if report["parity"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
