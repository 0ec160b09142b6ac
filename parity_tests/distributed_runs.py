"""Training runs for the data-parallel tests, each backend in a subprocess of its own.

``python -m parity_tests.distributed_runs torch|jax OUT.json`` trains one tiny masked-token model
(embedding, tanh, linear over the vocabulary; a masked cross-entropy whose rows hold 1 to 7 real
tokens, so ranks hold unequal numbers of them: the torchtune trap) from the same numpy weights, on
the same global batches of the core ``BatchSampler`` (37 samples in batches of 8: the last batch of
each epoch, 5 samples, does not divide by the ranks), and writes every run's history as JSON:

- torch: ``reference`` (one process, the plain mean loss over the whole global batch), ``ddp``
  (``torch_impl.distributed`` over 2 gloo processes), and two negative controls a naive user would
  write over plain DDP: ``naive`` (each rank's own token mean, which DDP averages: a mean of per-rank
  means) and ``double`` (local sum over the global count: DDP's own averaging then divides by N again).
- jax: ``reference`` (one device, plain mean loss) and ``sharded-2``, ``sharded-4``
  (``jax_impl.distributed`` over 2 and 4 simulated CPU devices; the caller sets
  ``JAX_NUM_CPU_DEVICES=4``, so that the test process's own JAX is left untouched).

Each history: ``step_loss`` (every optimizer step's global batch loss), ``epoch_loss`` (per-sample
epoch means: batch losses weighted by their number of samples), and the final ``params`` (canonical
torch layout, nested lists).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ml_patterns.distributed import global_layout, shard
from ml_patterns.samplers import BatchSampler

VOCAB, LENGTH, DIM = 13, 7, 8
SAMPLES, BATCH, EPOCHS = 37, 8, 6  # 5 global batches an epoch, 30 optimizer steps
LEARNING_RATE, MOMENTUM = 0.3, 0.9  # SGD: Adam's scale invariance would hide double averaging
TORCH_WORLD, JAX_WORLDS = 2, (2, 4)


def problem() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(data, initial weights)``: data ``x``/``y`` int ``[SAMPLES, LENGTH]``, ``mask`` float32;
    weights in torch's layout (``head.weight`` ``[VOCAB, DIM]``)."""
    rng = np.random.default_rng(13)
    x = rng.integers(0, VOCAB, (SAMPLES, LENGTH))
    y = (3 * x + np.arange(LENGTH)) % VOCAB
    lengths = rng.integers(1, LENGTH + 1, SAMPLES)
    mask = (np.arange(LENGTH) < lengths[:, None]).astype(np.float32)
    weights = {
        "embed.weight": rng.normal(0, 0.5, (VOCAB, DIM)).astype(np.float32),
        "head.weight": rng.normal(0, 0.3, (VOCAB, DIM)).astype(np.float32),
        "head.bias": np.zeros(VOCAB, np.float32),
    }
    return {"x": x, "y": y, "mask": mask}, weights


def global_batches():
    """``(epoch, indices)`` of every global batch, from the core sampler (both backends alike)."""
    sampler = BatchSampler(SAMPLES, BATCH, shuffle=True, seed=7)
    for epoch in range(EPOCHS):
        for indices in sampler:
            yield epoch, indices


def history(losses: list[float], sizes: list[int], epochs: list[int], params: dict) -> dict:
    losses, sizes, epochs = np.array(losses), np.array(sizes), np.array(epochs)
    epoch_loss = [float((losses * sizes)[epochs == e].sum() / sizes[epochs == e].sum()) for e in range(EPOCHS)]
    return {
        "step_loss": losses.tolist(),
        "epoch_loss": epoch_loss,
        "params": {k: np.asarray(v).tolist() for k, v in params.items()},
    }


# -- torch ----------------------------------------------------------------------------------------
def _torch_model():
    import torch
    from torch import nn

    from torch_impl.losses import masked_cross_entropy_sum

    class TokenModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.head = nn.Embedding(VOCAB, DIM), nn.Linear(DIM, VOCAB)

        def forward(self, x):
            return self.head(torch.tanh(self.embed(x)))

        def loss_sums(self, batch, weight):
            return {"tokens": masked_cross_entropy_sum(self(batch["x"]), batch["y"], batch["mask"] * weight[:, None])}

    model = TokenModel()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in problem()[1].items()})
    return model


def _torch_batch(data, indices):
    import torch

    return {k: torch.from_numpy(v[indices]) for k, v in data.items()}


def _torch_params(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def torch_reference() -> dict:
    import torch

    from torch_impl.losses import masked_cross_entropy

    model, (data, _) = _torch_model(), problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    losses, sizes, epochs = [], [], []
    for epoch, indices in global_batches():
        batch = _torch_batch(data, indices)
        optimizer.zero_grad()
        loss = masked_cross_entropy(model(batch["x"]), batch["y"], batch["mask"])
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach())), sizes.append(len(indices)), epochs.append(epoch)
    return history(losses, sizes, epochs, _torch_params(model))


def torch_rank(context) -> dict:
    """One rank's runs (``launch``ed): ``{mode: history}``, modes "ddp" and the controls."""
    return {mode: _torch_rank_run(context, mode) for mode in ("ddp", "naive", "double")}


def _torch_rank_run(context, mode: str) -> dict:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from torch_impl import distributed
    from torch_impl.losses import masked_cross_entropy_sum

    model, (data, _) = _torch_model(), problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    if mode == "ddp":
        step = distributed.make_train_step(model, optimizer, context)
    else:
        ddp = DistributedDataParallel(model)
    losses, sizes, epochs = [], [], []
    for epoch, indices in global_batches():
        part = shard(indices, context.world_size, context.rank)
        batch, weight = _torch_batch(data, part.indices), torch.from_numpy(part.weight)
        if mode == "ddp":
            loss = step(batch, weight)
        else:
            optimizer.zero_grad()
            mask = batch["mask"] * weight[:, None]
            logits = ddp(batch["x"])
            total, count = masked_cross_entropy_sum(logits, batch["y"], mask)
            sums = torch.stack([total.detach(), count])
            dist.all_reduce(sums)
            if mode == "naive":  # this rank's token mean; DDP averages the ranks' gradients
                local = total / count
            else:  # "double": the global count is right, but DDP divides by N once more
                local = total / sums[1]
            local.backward()
            optimizer.step()
            loss = sums[0] / sums[1]  # reported right: only the gradients are wrong
        losses.append(float(loss.detach())), sizes.append(len(indices)), epochs.append(epoch)
    return history(losses, sizes, epochs, _torch_params(model))


def run_torch() -> dict:
    from torch_impl import distributed

    out = {"reference": torch_reference()}
    ranks = distributed.launch(torch_rank, TORCH_WORLD)
    for mode, run in ranks[0].items():
        out[mode] = {**run, "ranks_agree": all(r[mode]["params"] == run["params"] for r in ranks)}
    return out


# -- JAX ------------------------------------------------------------------------------------------
def _jax_model():
    import jax.numpy as jnp
    from flax import nnx

    from jax_impl.losses import masked_cross_entropy_sum

    class TokenModel(nnx.Module):
        def __init__(self, weights):
            rngs = nnx.Rngs(0)
            self.embed, self.head = nnx.Embed(VOCAB, DIM, rngs=rngs), nnx.Linear(DIM, VOCAB, rngs=rngs)
            self.embed.embedding.set_value(jnp.asarray(weights["embed.weight"]))
            self.head.kernel.set_value(jnp.asarray(weights["head.weight"].T))
            self.head.bias.set_value(jnp.asarray(weights["head.bias"]))

        def __call__(self, x):
            return self.head(jnp.tanh(self.embed(x)))

        def loss_sums(self, batch, weight):
            return {"tokens": masked_cross_entropy_sum(self(batch["x"]), batch["y"], batch["mask"] * weight[:, None])}

    return TokenModel(problem()[1])


def _jax_params(params) -> dict:
    return {
        "embed.weight": np.asarray(params["embed"]["embedding"][...]),
        "head.weight": np.asarray(params["head"]["kernel"][...]).T,
        "head.bias": np.asarray(params["head"]["bias"][...]),
    }


def jax_reference() -> dict:
    import jax
    import optax
    from flax import nnx

    from jax_impl.losses import masked_cross_entropy

    model, (data, _) = _jax_model(), problem()
    graphdef, params = nnx.split(model)
    optimizer = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)

    @jax.jit
    def step(params, opt_state, batch):
        def loss(p):
            return masked_cross_entropy(nnx.merge(graphdef, p)(batch["x"]), batch["y"], batch["mask"])

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    opt_state = optimizer.init(params)
    losses, sizes, epochs = [], [], []
    for epoch, indices in global_batches():
        params, opt_state, loss = step(params, opt_state, {k: v[indices] for k, v in data.items()})
        losses.append(float(loss)), sizes.append(len(indices)), epochs.append(epoch)
    return history(losses, sizes, epochs, _jax_params(params))


def jax_sharded(world_size: int) -> dict:
    import jax
    import optax

    from jax_impl import distributed

    context = distributed.setup(jax.devices()[:world_size])
    model, (data, _) = _jax_model(), problem()
    step, state = distributed.make_train_step(model, optax.sgd(LEARNING_RATE, momentum=MOMENTUM), context)
    losses, sizes, epochs = [], [], []
    for epoch, indices in global_batches():
        layout = global_layout(indices, world_size)
        batch, weight = distributed.shard_batch(
            ({k: v[layout.indices] for k, v in data.items()}, layout.weight), context
        )
        state, loss = step(state, batch, weight)
        losses.append(float(loss)), sizes.append(len(indices)), epochs.append(epoch)
    return history(losses, sizes, epochs, _jax_params(state.params))


def run_jax() -> dict:
    out = {"reference": jax_reference()}
    for world_size in JAX_WORLDS:
        out[f"sharded-{world_size}"] = jax_sharded(world_size)
    return out


if __name__ == "__main__":
    # Through the module's importable name, not __main__: spawned ranks import the functions they run.
    from parity_tests import distributed_runs  # noqa: PLW0406

    backend, path = sys.argv[1:3]
    Path(path).write_text(
        json.dumps(distributed_runs.run_torch() if backend == "torch" else distributed_runs.run_jax())
    )
