"""Training runs for the data-parallel tests, each backend in a subprocess of its own.

``python -m parity_tests.distributed_runs torch|jax OUT.json CHECKPOINTS DATA`` trains one tiny
masked-token model (embedding, tanh, linear over the vocabulary; a masked cross-entropy whose rows
hold 1 to 7 real tokens, so ranks hold unequal numbers of them: the torchtune trap) with each
backend's ``Trainer``, from the same numpy weights, on the same global batches of the core
``BatchSampler`` (37 samples in batches of 8, validation 21 in batches of 8: the last batch of each
does not divide by the ranks), SGD with momentum through ``OptimizerConfig`` (so checkpoints cross
backends; Adam's invariance to the gradient's scale would hide double averaging), and writes every
run's history as JSON:

- torch: ``reference`` (one process: the model's plain ``compute_loss``, its token mean over the
  whole global batch), ``ddp`` (``Trainer(distributed=...)`` over 2 gloo processes; at epoch
  ``RESUME_AT`` it writes ``CHECKPOINTS/torch-ddp``, and each rank asks to write
  ``CHECKPOINTS/rank-<r>``: only rank 0 may), ``resumed`` (one process resuming ``torch-ddp``), and
  two negative controls a naive user would write over plain DDP: ``naive`` (each rank's own token
  mean, which DDP averages: a mean of per-rank means) and ``double`` (local sum over the global
  count: DDP's own averaging then divides by N again).
- jax: ``reference`` (one device), ``sharded-2``, ``sharded-4`` (``Trainer(distributed=...)`` over 2
  and 4 simulated CPU devices; the caller sets ``JAX_NUM_CPU_DEVICES=4``, so that the test
  process's own JAX is left untouched; ``sharded-4`` writes ``CHECKPOINTS/jax-sharded``),
  ``resumed`` (one device resuming ``jax-sharded``) and ``padded-sharded-2``/``-3`` (2 and 3
  devices, every batch padded to ``BATCH`` rows: ``Trainer(pad_batches_to=...)``).

Both also train the molecule multi-task model (``molecule``: one device; ``molecule-ddp``: 2
processes; ``molecule-sharded``: 4 devices; JAX's ``molecule-padded``: one device, every batch
padded to the batch size) on the default dataset prepared in DATA, from the initial weights the
caller wrote to ``CHECKPOINTS/molecule-initial.safetensors``.

Each history: ``step_loss`` (every optimizer step's global batch loss), ``train_loss`` and
``val_loss`` (the trainer's per-sample epoch means), and the final ``params`` (canonical names).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ml_patterns import checkpoint
from ml_patterns.callbacks import Callback
from ml_patterns.data import LazyDataset, Subset
from ml_patterns.distributed import shard
from ml_patterns.loader import BatchLoader
from ml_patterns.molecules.batches import BatchPreparer
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.molecules.prepare import read_manifest
from ml_patterns.optim import OptimizerConfig
from ml_patterns.samplers import BatchSampler

VOCAB, LENGTH, DIM = 13, 7, 8
SAMPLES, VAL_SAMPLES, BATCH, EPOCHS = 37, 21, 8, 6  # 5 global batches an epoch, 30 optimizer steps
RESUME_AT = 3  # epochs before the checkpoint that other runs resume
OPTIMIZER = OptimizerConfig("sgd", learning_rate=0.3, momentum=0.9)
TORCH_WORLD, JAX_WORLDS = 2, (2, 4)

# The molecule multi-task model (regression heads and masked tokens) on the default dataset: 37
# training molecules in batches of 16 (a last batch of 5), 11 validation ones, 6 AdamW steps.
MOLECULES, VAL_MOLECULES, MOLECULE_BATCH, MOLECULE_EPOCHS = 37, 11, 16, 2
MOLECULE_OPTIMIZER = OptimizerConfig("adamw", learning_rate=2e-3, weight_decay=0.01)
MOLECULE_COLLATE = {"buckets": (64,), "max_length": 64}  # one padded shape: one compilation


def problem() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(data, initial weights)``: data ``x``/``y`` int ``[SAMPLES + VAL_SAMPLES, LENGTH]``,
    ``mask`` float32; weights canonical (torch layout)."""
    rng = np.random.default_rng(13)
    n = SAMPLES + VAL_SAMPLES
    x = rng.integers(0, VOCAB, (n, LENGTH))
    y = (3 * x + np.arange(LENGTH)) % VOCAB
    lengths = rng.integers(1, LENGTH + 1, n)
    mask = (np.arange(LENGTH) < lengths[:, None]).astype(np.float32)
    weights = {
        "embed.weight": rng.normal(0, 0.5, (VOCAB, DIM)).astype(np.float32),
        "head.weight": rng.normal(0, 0.3, (VOCAB, DIM)).astype(np.float32),
        "head.bias": np.zeros(VOCAB, np.float32),
    }
    return {"x": x, "y": y, "mask": mask}, weights


def loaders(val_batch: int = BATCH) -> tuple[BatchLoader, BatchLoader]:
    """``(train, val)``: collated global batches (dicts of numpy arrays), the same in every process;
    validation in batches of ``val_batch``."""
    data, _ = problem()
    records = [{k: v[i] for k, v in data.items()} for i in range(SAMPLES + VAL_SAMPLES)]

    def collate(rows: list[dict]) -> dict:
        return {k: np.stack([row[k] for row in rows]) for k in rows[0]}

    train = BatchLoader(records[:SAMPLES], BatchSampler(SAMPLES, BATCH, shuffle=True, seed=7), collate, prefetch=0)
    val = BatchLoader(records[SAMPLES:], BatchSampler(VAL_SAMPLES, val_batch, shuffle=False), collate, prefetch=0)
    return train, val


def global_batches():
    """``(epoch, indices)`` of every training batch, as the train loader's sampler yields them."""
    sampler = BatchSampler(SAMPLES, BATCH, shuffle=True, seed=7)
    for epoch in range(EPOCHS):
        for indices in sampler:
            yield epoch, indices


class StepLosses(Callback):
    """Every step's loss (a host sync per step: fine in a test)."""

    def __init__(self):
        self.losses: list[float] = []

    def on_batch_end(self, batch_idx, trainer, loss) -> None:
        self.losses.append(float(loss))


def fit(trainer, params, data: tuple | None = None, epochs: int = EPOCHS) -> dict:
    """Trains to ``epochs`` (from wherever ``trainer`` stands) on ``data`` (``loaders()``, fresh by
    default; a run fitted twice passes the same, whose sampler goes on) and returns the history."""
    history = trainer.fit(*(data or loaders()), epochs)
    return {
        "step_loss": trainer.callbacks[0].losses,
        "train_loss": history["train_loss"],
        "val_loss": history["val_loss"],
        "params": {k: v.tolist() for k, v in params().items()},
    }


def molecule_config(data: Path) -> ModelConfig:
    return ModelConfig.from_manifest(
        read_manifest(data), architecture="multitask", d_model=32, n_heads=2, n_layers=1, n_decoder_layers=1,
        d_ff=64, max_len=64, dropout=0.0, attention_dropout=0.0, seed=3,
    )  # fmt: skip


INITIAL_WEIGHTS = "molecule-initial.safetensors"  # in CHECKPOINTS, written by the caller


def molecule_run(backend: str, data: Path, checkpoints: Path, distributed=None, **options) -> dict:
    """The molecule model trained by ``backend``'s Trainer (with ``distributed`` and ``options``):
    its losses, and the programs JAX compiled."""
    import importlib

    impl = importlib.import_module(f"{backend}_impl")
    for module in ("data", "molecules.models", "training"):
        importlib.import_module(f"{backend}_impl.{module}")
    config = molecule_config(data)
    arrays, _ = checkpoint.load_checkpoint(checkpoints / INITIAL_WEIGHTS)
    model = impl.molecules.models.build_model(config, weights=arrays)
    device = {"device": "cpu"} if backend == "torch" and distributed is None else {}
    trainer = impl.training.Trainer(
        model, MOLECULE_OPTIMIZER, [StepLosses()], batch_transform=BatchPreparer(config), distributed=distributed,
        **device, **options,
    )  # fmt: skip
    train = Subset(LazyDataset(data, split="train"), range(MOLECULES))
    val = Subset(LazyDataset(data, split="val"), range(VAL_MOLECULES))
    history = trainer.fit(
        impl.data.make_loader(train, MOLECULE_BATCH, seed=7, **MOLECULE_COLLATE),
        impl.data.make_loader(val, MOLECULE_BATCH, shuffle=False, **MOLECULE_COLLATE),
        MOLECULE_EPOCHS,
    )
    return {
        "step_loss": trainer.callbacks[0].losses,
        "train_loss": history["train_loss"],
        "val_loss": history["val_loss"],
        **({"compilations": trainer.compilations()} if backend == "jax" else {}),
    }


class TokenLosses:
    """The token model's two losses, written once: ``losses`` is the backend's losses module."""

    def compute_loss(self, batch):
        return self.losses.masked_cross_entropy(self(batch["x"]), batch["y"], batch["mask"])

    def loss_sums(self, batch, weight):
        mask = batch["mask"] * weight[:, None]  # padding rows weigh 0
        return {"tokens": self.losses.masked_cross_entropy_sum(self(batch["x"]), batch["y"], mask)}


# -- torch ----------------------------------------------------------------------------------------
def torch_model():
    import torch
    from torch import nn

    from torch_impl import losses as torch_losses
    from torch_impl import state

    class TokenModel(TokenLosses, nn.Module):
        losses = torch_losses

        def __init__(self):
            super().__init__()
            self.embed, self.head = nn.Embedding(VOCAB, DIM), nn.Linear(DIM, VOCAB)

        def forward(self, x):
            return self.head(torch.tanh(self.embed(x)))

    model = TokenModel()
    state.from_numpy(model, problem()[1])
    return model


def torch_trainer(distributed=None, **options):
    """torch's Trainer of the token model; ``options`` go to ``Trainer`` (``pad_batches_to``)."""
    from torch_impl import state
    from torch_impl.training import Trainer

    device = "cpu" if distributed is None else None
    trainer = Trainer(torch_model(), OPTIMIZER, [StepLosses()], device=device, distributed=distributed, **options)
    return trainer, lambda: state.to_numpy(trainer.model)


def torch_resumed(checkpoint: Path) -> dict:
    trainer, params = torch_trainer()
    trainer.load_checkpoint(checkpoint)
    return fit(trainer, params)


def torch_rank(context, checkpoints: Path, molecules: Path) -> dict:
    """One rank's runs (``launch``ed): ``{"ddp": ..., "naive": ..., "double": ..., "molecule-ddp": ...}``."""
    (trainer, params), data = torch_trainer(context), loaders()
    fit(trainer, params, data, RESUME_AT)
    trainer.save_checkpoint(checkpoints / "torch-ddp")
    trainer.save_checkpoint(checkpoints / f"rank-{context.rank}")
    runs = {"ddp": fit(trainer, params, data), **{mode: _torch_naive(context, mode) for mode in ("naive", "double")}}
    return {**runs, "molecule-ddp": molecule_run("torch", molecules, checkpoints, context)}


def _torch_naive(context, mode: str) -> dict:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from torch_impl.losses import masked_cross_entropy_sum
    from torch_impl.state import to_numpy

    model, (data, _) = torch_model(), problem()
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=OPTIMIZER.learning_rate, momentum=OPTIMIZER.momentum)
    losses = []
    for _, indices in global_batches():
        part = shard(indices, context.world_size, context.rank)
        batch = {k: torch.from_numpy(v[part.indices]) for k, v in data.items()}
        mask = batch["mask"] * torch.from_numpy(part.weight)[:, None]
        optimizer.zero_grad()
        total, count = masked_cross_entropy_sum(ddp(batch["x"]), batch["y"], mask)
        sums = torch.stack([total.detach(), count])
        dist.all_reduce(sums)
        if mode == "naive":  # this rank's token mean; DDP averages the ranks' gradients
            local = total / count
        else:  # "double": the global count is right, but DDP divides by N once more
            local = total / sums[1]
        local.backward()
        optimizer.step()
        losses.append(float(sums[0] / sums[1]))  # reported right: only the gradients are wrong
    return {"step_loss": losses, "params": {k: v.tolist() for k, v in to_numpy(model).items()}}


def run_torch(checkpoints: Path, molecules: Path) -> dict:
    from torch_impl import distributed

    trainer, params = torch_trainer()
    out = {"reference": fit(trainer, params), "molecule": molecule_run("torch", molecules, checkpoints)}
    ranks = distributed.launch(torch_rank, TORCH_WORLD, checkpoints, molecules)
    for mode, run in ranks[0].items():
        out[mode] = {**run, "ranks_agree": all(r[mode].get("params") == run.get("params") for r in ranks)}
    out["resumed"] = torch_resumed(checkpoints / "torch-ddp")
    return out


# -- JAX ------------------------------------------------------------------------------------------
def jax_model():
    import jax.numpy as jnp
    from flax import nnx

    from jax_impl import losses as jax_losses
    from jax_impl import state

    class TokenModel(TokenLosses, nnx.Module):
        losses = jax_losses

        def __init__(self):
            rngs = nnx.Rngs(0)
            self.embed, self.head = nnx.Embed(VOCAB, DIM, rngs=rngs), nnx.Linear(DIM, VOCAB, rngs=rngs)

        def __call__(self, x):
            return self.head(jnp.tanh(self.embed(x)))

    model = TokenModel()
    state.from_numpy(model, problem()[1])
    return model


def jax_trainer(distributed=None, **options):
    """JAX's Trainer of the token model; ``options`` go to ``Trainer`` (``pad_batches_to``)."""
    from jax_impl import state
    from jax_impl.training import Trainer

    trainer = Trainer(jax_model(), OPTIMIZER, [StepLosses()], distributed=distributed, **options)
    return trainer, lambda: state.to_numpy(trainer.model)


def jax_resumed(checkpoint: Path) -> dict:
    trainer, params = jax_trainer()
    trainer.load_checkpoint(checkpoint)
    return fit(trainer, params)


def run_jax(checkpoints: Path, molecules: Path) -> dict:
    import jax

    from jax_impl import distributed

    trainer, params = jax_trainer()
    out = {"reference": fit(trainer, params), "molecule": molecule_run("jax", molecules, checkpoints)}
    out["molecule-sharded"] = molecule_run(
        "jax", molecules, checkpoints, distributed.setup(jax.devices()[: max(JAX_WORLDS)])
    )
    # Every batch padded to the batch size: the short last batches run the full ones' programs.
    out["molecule-padded"] = molecule_run("jax", molecules, checkpoints, pad_batches_to=MOLECULE_BATCH)
    for world_size in (2, 3):  # 3 does not divide the batch of 8: 3 rows per device, 9 in all
        trainer, params = jax_trainer(distributed.setup(jax.devices()[:world_size]), pad_batches_to=BATCH)
        out[f"padded-sharded-{world_size}"] = {**fit(trainer, params), "compilations": trainer.compilations()}
    for world_size in JAX_WORLDS:
        (trainer, params), data = jax_trainer(distributed.setup(jax.devices()[:world_size])), loaders()
        if world_size == max(JAX_WORLDS):
            fit(trainer, params, data, RESUME_AT)
            trainer.save_checkpoint(checkpoints / "jax-sharded")
        out[f"sharded-{world_size}"] = fit(trainer, params, data)
    out["resumed"] = jax_resumed(checkpoints / "jax-sharded")
    return out


if __name__ == "__main__":
    # Through the module's importable name, not __main__: spawned ranks import the functions they run.
    from parity_tests import distributed_runs  # noqa: PLW0406

    backend, path, checkpoints, molecules = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    run = distributed_runs.run_torch if backend == "torch" else distributed_runs.run_jax
    path.write_text(json.dumps(run(checkpoints, molecules)))
