"""Seed-style callbacks on both backends: a Callback of your own (the seed's hooks), EarlyStopping
and ModelCheckpoint in the seed's positional order, then a resume from the best checkpoint, which
continues as the uninterrupted run did: a checkpoint holds every callback's state after its epoch.

Run: ``python examples/callbacks.py`` (a few seconds on a CPU).
"""

# expect: ^jax: resumed from epoch_\d+, it stops at epoch \d+ as the run did, with the same checkpoints

import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

import jax_impl.training
import torch_impl.training
from ml_patterns.callbacks import Callback, EarlyStopping, ModelCheckpoint, StopReason


class LossPrinter(Callback):
    """Prints batch 10's loss each epoch (``float(loss)`` is a host sync: not every batch), and the epoch's."""

    def on_batch_end(self, batch_idx, trainer, loss):
        self.loss = float(loss) if batch_idx == 10 else getattr(self, "loss", None)

    def on_epoch_end(self, epoch, trainer, metrics):
        train, val = metrics["train_loss"], metrics["val_loss"]
        print(f"  epoch {epoch}: batch 10 {self.loss:.4f}, train={train:.4f}, val={val:.4f}")


def batches(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``{"x": float32 [32, 8], "y": float32 [32]}`` batches, y = sin(2 * mean(x))."""
    x = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    y = np.sin(2 * x.mean(axis=1))
    return [{"x": x[i : i + 32], "y": y[i : i + 32]} for i in range(0, n, 32)]


class TorchMLP(torch.nn.Sequential):
    def compute_loss(self, batch):
        return torch.mean((self(batch["x"])[:, 0] - batch["y"]) ** 2)


class JaxMLP(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.hidden, self.out = nnx.Linear(8, 32, rngs=rngs), nnx.Linear(32, 1, rngs=rngs)

    def compute_loss(self, batch):
        return jnp.mean((self.out(jnp.tanh(self.hidden(batch["x"])))[:, 0] - batch["y"]) ** 2)


def setup(backend: str):
    if backend == "torch":
        torch.manual_seed(0)
        model = TorchMLP(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        return torch_impl.training, model, torch.optim.Adam(model.parameters(), lr=1e-2)
    return jax_impl.training, JaxMLP(), optax.adam(1e-2)


def why_stopped(stopper: EarlyStopping, trainer) -> str:
    """The trainer's stop reason, with the numbers where EarlyStopping's says "`patience`"."""
    if stopper.stop_reason is StopReason.PATIENCE_EXHAUSTED:
        return f"{stopper.monitor} did not improve by {stopper.min_delta:g} for {stopper.patience} epochs"
    return trainer.stop_reason


def main() -> None:
    train, val = batches(640, seed=0), batches(128, seed=1)
    with tempfile.TemporaryDirectory() as out:
        for backend in ("torch", "jax"):
            print(f"{backend}:")
            training, model, optimizer = setup(backend)
            stopper = EarlyStopping(3, 1e-3, restore_best_weights=True)  # patience, min_delta
            checkpoints = ModelCheckpoint(Path(out) / backend)  # save_best_only=True: path/epoch_{epoch}
            trainer = training.Trainer(model, optimizer, [LossPrinter(), stopper, checkpoints])
            history = trainer.fit(train, val, num_epochs=50)
            saved = sorted(p.name for p in (Path(out) / backend).iterdir())
            best = Path(checkpoints.best_model_path).name
            training, model, optimizer = setup(backend)
            # The same callbacks (LossPrinter keeps no state: the base class stands in for it, quietly).
            again = [
                Callback(),
                EarlyStopping(3, 1e-3, restore_best_weights=True),
                ModelCheckpoint(Path(out) / backend),
            ]
            resumed = training.Trainer(model, optimizer, again)
            resumed.load_checkpoint(checkpoints.best_model_path)
            print(
                f"{backend}: stopped after {len(history)} epochs ({why_stopped(stopper, trainer)}), best checkpoint "
                f"{best} resumes at epoch {resumed.epoch}"
            )
            resumed.fit(train, val, num_epochs=50)
            again_saved = sorted(p.name for p in (Path(out) / backend).iterdir())
            if (len(resumed.history), resumed.stop_reason, again_saved) != (len(history), trainer.stop_reason, saved):
                raise SystemExit(f"{backend}: the resumed run decided otherwise ({resumed.stop_reason})")
            print(f"{backend}: resumed from {best}, it stops at epoch {len(history) - 1} as the run did, ", end="")
            print("with the same checkpoints")


if __name__ == "__main__":
    main()
