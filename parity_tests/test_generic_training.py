"""A generic (non-molecule) model trained with each framework's own optimizer agrees across backends.

An MLP classifier on synthetic numpy data, the model and batches the user's own (no
``ml_patterns`` model, collate or optimizer config): torch.optim.AdamW against optax.adamw, from
the same initial weights (copied) and the same batch order, 8 epochs of 13 batches (104 steps, a
short last batch each epoch). Every epoch's train and val loss agrees within the training-history
tolerance of PARITY.md.

Matching the two AdamWs (PARITY.md's traps): weight decay passed explicitly (torch's default is
0.01, optax's 1e-4); eps the same 1e-8 added outside the square root on both sides, optax's
``eps_root`` 0 (its default, and torch has none); the decoupled decay is the same formula, torch's
``p <- p * (1 - lr * wd) - lr * adam(g)`` being optax's ``p <- p - lr * (adam(g) + wd * p)``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jax_impl.state
import jax_impl.training
import torch_impl.state
import torch_impl.training
from ml_patterns.samplers import BatchSampler
from parity_tests.tolerances import HISTORY

FEATURES, HIDDEN, CLASSES = 10, 32, 3
TRAIN, VAL, BATCH, EPOCHS = 400, 96, 32, 8
LR, BETAS, EPS, WEIGHT_DECAY = 3e-3, (0.9, 0.999), 1e-8, 0.01


class TorchClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden, self.out = torch.nn.Linear(FEATURES, HIDDEN), torch.nn.Linear(HIDDEN, CLASSES)

    def compute_loss(self, batch):
        return torch.nn.functional.cross_entropy(self.out(torch.tanh(self.hidden(batch["x"]))), batch["label"])


class JaxClassifier(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden, self.out = nnx.Linear(FEATURES, HIDDEN, rngs=rngs), nnx.Linear(HIDDEN, CLASSES, rngs=rngs)

    def compute_loss(self, batch):
        logits = self.out(jnp.tanh(self.hidden(batch["x"])))
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()


class ArrayLoader:
    """Batches ``{"x": float32 [B, FEATURES], "label": int [B]}`` in a ``BatchSampler``'s order."""

    def __init__(self, arrays: dict, shuffle: bool):
        self.arrays = arrays
        self.sampler = BatchSampler(len(arrays["x"]), BATCH, shuffle=shuffle, seed=5)

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        for indices in self.sampler:
            yield {key: value[indices] for key, value in self.arrays.items()}


def synthetic(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    scores = x @ np.random.default_rng(0).normal(size=(FEATURES, CLASSES)) + 0.5 * rng.normal(size=(n, CLASSES))
    return {"x": x, "label": scores.argmax(axis=1)}


@pytest.mark.standard_promotion("optax's Adam mixes the int32 step count with Python floats")
def test_adamw_training_histories_agree():
    train, val = synthetic(TRAIN, 1), synthetic(VAL, 2)
    torch.manual_seed(0)
    torch_model, jax_model = TorchClassifier(), JaxClassifier(nnx.Rngs(1))
    initial = torch_impl.state.to_numpy(torch_model)
    jax_impl.state.from_numpy(jax_model, initial)

    torch_optimizer = torch.optim.AdamW(
        torch_model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY
    )
    jax_optimizer = optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, eps_root=0.0, weight_decay=WEIGHT_DECAY)
    histories = {
        "torch": torch_impl.training.train(
            torch_model, ArrayLoader(train, True), ArrayLoader(val, False), torch_optimizer, EPOCHS, device="cpu"
        ),
        "jax": jax_impl.training.train(
            jax_model, ArrayLoader(train, True), ArrayLoader(val, False), jax_optimizer, EPOCHS
        ),
    }
    assert len(histories["torch"]["train_loss"]) == len(histories["jax"]["train_loss"]) == EPOCHS
    assert histories["torch"]["train_loss"][-1] < 0.6 * histories["torch"]["train_loss"][0], "the model must learn"
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(
            histories["jax"][key], histories["torch"][key], rtol=HISTORY.rtol, atol=HISTORY.atol, err_msg=key
        )
    # The trained weights agree far better than either agrees with the initial ones.
    trained = {"torch": torch_impl.state.to_numpy(torch_model), "jax": jax_impl.state.to_numpy(jax_model)}
    travelled = max(np.abs(trained["torch"][k] - initial[k]).max() for k in initial)
    apart = max(np.abs(trained["torch"][k] - trained["jax"][k]).max() for k in initial)
    assert apart < 1e-3 * travelled, f"weights {apart:.3g} apart after travelling {travelled:.3g}"
