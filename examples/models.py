"""The seed's EncoderDecoder and MultiTaskModel with plain layers, on both backends, and save/load.

A loss comes either from ``loss_fn(model, batch)`` or from a subclass's ``compute_loss`` (the seed's
way). A checkpoint saved by torch loads into the JAX twin (same names), and torch also reads the
seed's ``torch.save(state_dict)`` files.  Run: ``python examples/models.py``.
"""

# expect: ^torch vs JAX after loading: max \|diff\| = \d\.\d\de-(0[6-9]|[1-9]\d)$

from __future__ import annotations

import tempfile

import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

from jax_impl import models as jax_models
from torch_impl import models as torch_models


def reconstruction(model, batch):
    return F.mse_loss(model(batch["x"]), batch["x"])


class TwoTasks(torch_models.MultiTaskModel):
    """The seed's way: a subclass defines ``compute_loss``."""

    def compute_loss(self, batch: dict) -> torch.Tensor:
        out = self(batch["x"])
        return F.mse_loss(out["value"][:, 0], batch["value"]) + F.cross_entropy(out["class"], batch["class"])


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8)).astype(np.float32)
    batch = {"x": torch.from_numpy(x), "value": torch.from_numpy(x.sum(1)), "class": torch.from_numpy(x.argmax(1) % 3)}

    torch.manual_seed(0)
    autoencoder = torch_models.EncoderDecoder(nn.Linear(8, 3), nn.Linear(3, 8), loss_fn=reconstruction)
    z = autoencoder.encode(batch["x"])  # [16, 3]
    print("latent", tuple(z.shape), "reconstruction", tuple(autoencoder.decode(z).shape))
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=1e-2)
    for _ in range(50):
        optimizer.zero_grad()
        loss = autoencoder.compute_loss(batch)
        loss.backward()
        optimizer.step()
    print(f"autoencoder loss after 50 Adam steps: {loss.item():.4f}")

    multi = TwoTasks(nn.Sequential(nn.Linear(8, 16), nn.ReLU()), {"value": nn.Linear(16, 1), "class": nn.Linear(16, 3)})
    print("tasks", {name: tuple(out.shape) for name, out in multi(batch["x"]).items()})
    print(f"multi-task loss {multi.compute_loss(batch).item():.4f}")
    print("one task", list(multi(batch["x"], task="class")))

    # The JAX twin, with nnx layers; the same loss, written with jnp.
    jax_autoencoder = jax_models.EncoderDecoder(
        nnx.Linear(8, 3, rngs=nnx.Rngs(0)),
        nnx.Linear(3, 8, rngs=nnx.Rngs(1)),
        loss_fn=lambda model, b: jnp.mean((model(b["x"]) - b["x"]) ** 2),
    )
    with tempfile.TemporaryDirectory() as tmp:
        autoencoder.save(f"{tmp}/autoencoder.safetensors")  # portable: either backend reads it
        jax_autoencoder.load(f"{tmp}/autoencoder.safetensors")
        torch.save(autoencoder.state_dict(), f"{tmp}/autoencoder.pt")  # the seed's format: torch reads it
        again = torch_models.EncoderDecoder(nn.Linear(8, 3), nn.Linear(3, 8)).load(f"{tmp}/autoencoder.pt", "cpu")
    with torch.no_grad():
        torch_out, again_out = autoencoder(batch["x"]).numpy(), again(batch["x"]).numpy()
    jax_out = np.asarray(jax_autoencoder(jnp.asarray(x)))
    print(f"torch vs JAX after loading: max |diff| = {np.abs(torch_out - jax_out).max():.2e}")
    print(f"JAX loss {float(jax_autoencoder.compute_loss({'x': jnp.asarray(x)})):.4f}")
    print(f".pt reloaded exactly: {np.array_equal(torch_out, again_out)}")


if __name__ == "__main__":
    main()
