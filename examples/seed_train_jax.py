"""The seed's basic training loop in JAX's idiom: your own Flax NNX module with
``compute_loss(batch)``, batches of numpy arrays, and an optax optimizer, passed to ``train`` as the
seed passes its torch optimizer. The trainer jits one pure, donated train step built from
``compute_loss``; the module holds the trained weights at the end.

Run: ``python examples/seed_train_jax.py`` (a few seconds on a CPU).
"""

# expect: ^Epoch 4: train=\d+\.\d{4}, val=\d+\.\d{4}$

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_impl.training import train


class Points:
    """An iterable of ``{"x": float32 [B, 8], "y": float32 [B]}`` batches, y = sin(2 * mean(x)),
    reshuffled every epoch when ``shuffle``."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = False):
        self.rng = np.random.default_rng(seed)
        self.x = self.rng.normal(size=(n, 8)).astype(np.float32)
        self.y = np.sin(2 * self.x.mean(axis=1))
        self.batch_size, self.shuffle = batch_size, shuffle

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        order = self.rng.permutation(len(self.x)) if self.shuffle else np.arange(len(self.x))
        for start in range(0, len(order), self.batch_size):
            indices = order[start : start + self.batch_size]
            yield {"x": self.x[indices], "y": self.y[indices]}


class Regressor(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden, self.out = nnx.Linear(8, 64, rngs=rngs), nnx.Linear(64, 1, rngs=rngs)

    def __call__(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return {"y": self.out(jax.nn.gelu(self.hidden(batch["x"]), approximate=False))[:, 0]}

    def compute_loss(self, batch: dict[str, jax.Array]) -> jax.Array:
        return jnp.mean((self(batch)["y"] - batch["y"]) ** 2)


def main() -> None:
    model = Regressor(nnx.Rngs(0))
    train_loader = Points(1024, batch_size=32, seed=0, shuffle=True)
    val_loader = Points(256, batch_size=64, seed=1)
    history = train(model, train_loader, val_loader, optax.adam(3e-3), num_epochs=5)
    for epoch, (train_loss, val_loss) in enumerate(zip(history["train_loss"], history["val_loss"])):
        print(f"Epoch {epoch}: train={train_loss:.4f}, val={val_loss:.4f}")
    assert history["val_loss"][-1] < history["val_loss"][0], "the model should learn"


if __name__ == "__main__":
    main()
