"""bf16-mixed on both backends (docs/PRECISION.md): torch's autocast and JAX's policy
(``jax_impl.precision``) put the same ops in bfloat16, agree on forward outputs, losses and every
gradient within the bfloat16 rows of ``ml_patterns.parity`` (each leaf against its scale), keep
float32 master weights and optimizer state through training steps, and train the same.

Both sides run from the same float32 weights; a third evaluation, torch in float64 without
autocast, gives each leaf its scale and shows each side as far from the truth as the other.
"""

from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jax_impl.models
import jax_impl.state
import jax_impl.training
import torch_impl.state
import torch_impl.training
from ml_patterns import parity
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.samplers import BatchSampler
from ml_patterns_app.porting.parity_report import build_pair, real_batch

PROMOTION = (
    "bf16-mixed adds bfloat16 activations to the float32 residual stream and float32 inputs, as "
    "torch's autocast does: standard promotion gives float32 there, strict promotion refuses"
)
FEATURES, HIDDEN, CLASSES, ROWS = 24, 64, 5, 32


def torch_mixed(model: torch.nn.Module, batch, dtype=torch.float32, autocast=True) -> dict:
    """Outputs, loss and float32 gradients of ``model`` (in eval mode) on the numpy ``batch``,
    under bfloat16 autocast, or in ``dtype`` without it (the float64 reference)."""
    model = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    tensors = jax.tree.map(lambda t: t.to(dtype) if t.is_floating_point() else t, torch_impl.training.to_device(batch))
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        outputs = model(tensors)
        loss = model.compute_loss(tensors)
    loss.backward()
    return {
        "dtypes": jax.tree.map(lambda t: str(t.dtype).removeprefix("torch."), outputs),
        "outputs": torch_impl.state.tree_to_numpy(jax.tree.map(torch.Tensor.detach, outputs)),
        "loss": float(loss.detach()),
        "gradients": {name: p.grad.numpy().copy() for name, p in model.named_parameters()},
        "gradient_dtypes": {str(p.grad.dtype).removeprefix("torch.") for p in model.parameters()},
    }


def jax_mixed(model: nnx.Module, batch) -> dict:
    """``torch_mixed``'s results from JAX's bf16-mixed policy (``functional(model, bfloat16)``)."""
    fn, params, rest = jax_impl.models.functional(model, jnp.bfloat16)
    outputs, loss, grads = _jax_step(fn, params, rest, jax_impl.training.to_device(batch))
    return {
        "dtypes": jax.tree.map(lambda a: str(a.dtype), outputs),
        "outputs": jax_impl.state.tree_to_numpy(outputs),
        "loss": float(loss),
        "gradients": jax_impl.state.to_numpy(model, grads),
        "gradient_dtypes": {str(g.dtype) for g in jax.tree.leaves(grads)},
    }


@functools.partial(jax.jit, static_argnames="fn")
def _jax_step(fn, params, rest, batch):
    (loss, _), grads = jax.value_and_grad(fn.compute_loss, has_aux=True)(params, rest, batch)
    return fn.apply(params, rest, batch), loss, grads


def assert_mixed_parity(torch_model, jax_model, batch) -> None:
    """Both sides' bf16-mixed results agree within ``parity.bf16_tolerance``, each leaf against its
    float64 scale (gradients: the model's largest gradient, PRECISION.md), and the computation
    really was bfloat16 on both sides alike."""
    mixed = {"torch": torch_mixed(torch_model, batch), "jax": jax_mixed(jax_model, batch)}
    truth = torch_mixed(torch_model, batch, torch.float64, autocast=False)
    # The same ops land in the same dtype on both sides (bfloat16 logits, float32 pooled features).
    assert mixed["torch"]["dtypes"] == mixed["jax"]["dtypes"]
    assert "bfloat16" in jax.tree.leaves(mixed["jax"]["dtypes"])
    assert mixed["torch"]["gradient_dtypes"] == mixed["jax"]["gradient_dtypes"] == {"float32"}

    gradient_scale = max(float(np.abs(g).max()) for g in truth["gradients"].values())
    rows = [
        parity.compare_arrays(
            "loss", mixed["torch"]["loss"], mixed["jax"]["loss"], parity.bf16_tolerance("loss", abs(truth["loss"]))
        )
    ]
    for name, value in truth["outputs"].items():
        scale = float(np.abs(value).max())
        rows.append(
            parity.compare_arrays(
                f"outputs/{name}",
                mixed["torch"]["outputs"][name],
                mixed["jax"]["outputs"][name],
                parity.bf16_tolerance("forward", scale),
            )
        )
    for name in truth["gradients"]:
        rows.append(
            parity.compare_arrays(
                f"gradients/{name}",
                mixed["torch"]["gradients"][name],
                mixed["jax"]["gradients"][name],
                parity.bf16_tolerance("gradient", gradient_scale),
            )
        )
    report = parity.Report(tuple(rows), names=("torch", "jax"))
    report.raise_if_failed()
    # Not vacuous: the two sides differ at bfloat16's resolution, far beyond float32's.
    assert any(row.max_abs_diff > 100 * parity.FORWARD.atol for row in rows if row.path.startswith("outputs/"))


@pytest.mark.standard_promotion(PROMOTION)
@pytest.mark.parametrize("architecture", ["multitask", "autoencoder"])
def test_molecule_models_autocast_parity(default_dataset, architecture):
    root, manifest = default_dataset
    sizes = dict(d_model=32, n_heads=4, n_layers=2, n_decoder_layers=2, d_ff=64, max_len=64)
    config = ModelConfig.from_manifest(manifest, architecture=architecture, **sizes)
    torch_model, jax_model = build_pair(config)
    assert_mixed_parity(torch_model, jax_model, real_batch(root, config, 8, seed=2))


class TorchNet(torch.nn.Module):
    """A generic model: linear, layer norm, GELU, linear, softmax cross-entropy."""

    def __init__(self):
        super().__init__()
        self.hidden, self.norm = torch.nn.Linear(FEATURES, HIDDEN), torch.nn.LayerNorm(HIDDEN)
        self.out = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, batch):
        return {"logits": self.out(torch.nn.functional.gelu(self.norm(self.hidden(batch["x"]))))}

    def compute_loss(self, batch):
        return torch.nn.functional.cross_entropy(self(batch)["logits"], batch["label"])


class JaxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden, self.norm = nnx.Linear(FEATURES, HIDDEN, rngs=rngs), nnx.LayerNorm(HIDDEN, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, CLASSES, rngs=rngs)

    def __call__(self, batch):
        return {"logits": self.out(jax.nn.gelu(self.norm(self.hidden(batch["x"])), approximate=False))}

    def compute_loss(self, batch):
        # torch's autocast runs cross_entropy in float32; JAX has no op list: the loss upcasts itself.
        logits = self(batch)["logits"].astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()


def generic_pair() -> tuple[TorchNet, JaxNet]:
    torch.manual_seed(0)
    torch_model, jax_model = TorchNet(), JaxNet(nnx.Rngs(0))
    jax_impl.state.from_numpy(jax_model, torch_impl.state.to_numpy(torch_model))
    return torch_model, jax_model


def generic_batch(seed: int, rows: int = ROWS) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    return {"x": x, "label": (x[:, :CLASSES] + 0.3 * rng.normal(size=(rows, CLASSES))).argmax(axis=1)}


@pytest.mark.standard_promotion(PROMOTION)
def test_generic_model_autocast_parity():
    torch_model, jax_model = generic_pair()
    assert_mixed_parity(torch_model, jax_model, generic_batch(1))


class Loader:
    def __init__(self, arrays: dict, batch: int):
        self.arrays, self.sampler = arrays, BatchSampler(len(arrays["x"]), batch, shuffle=True, seed=5)

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        for indices in self.sampler:
            yield {key: value[indices] for key, value in self.arrays.items()}


@pytest.mark.standard_promotion(PROMOTION + "; optax's Adam mixes its int32 step count with Python floats")
def test_training_keeps_float32_master_weights_and_agrees():
    torch_model, jax_model = generic_pair()
    adam = (torch.optim.Adam(torch_model.parameters(), lr=3e-3), optax.adam(3e-3))
    trainers = {
        "torch": torch_impl.training.Trainer(torch_model, adam[0], device="cpu", precision="bf16-mixed"),
        "jax": jax_impl.training.Trainer(jax_model, adam[1], precision="bf16-mixed"),
    }
    histories = {
        name: t.fit(Loader(generic_batch(2, 256), 32), num_epochs=EPOCHS).as_dict() for name, t in trainers.items()
    }
    torch_state = [*torch_model.parameters(), *(v for s in adam[0].state.values() for v in s.values())]
    assert {t.dtype for t in torch_state if t.is_floating_point()} == {torch.float32}
    jax_state = jax.tree.leaves((trainers["jax"].state.params, trainers["jax"].state.opt_state))
    assert {leaf.dtype for leaf in jax_state if jnp.issubdtype(leaf.dtype, jnp.floating)} == {np.dtype(np.float32)}
    losses = {name: np.array(history["train_loss"]) for name, history in histories.items()}
    assert losses["torch"][-1] < 0.7 * losses["torch"][0], "the model must learn"
    tolerance = parity.bf16_tolerance("history", float(losses["torch"].max()))
    np.testing.assert_allclose(losses["jax"], losses["torch"], rtol=0.0, atol=tolerance.atol)


EPOCHS = 6
