"""Checkpoints across backends: a checkpoint written by torch loads into JAX and the reverse, with
bit-identical weights and forward outputs within the forward tolerance."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl.models
import jax_impl.molecules.models
import jax_impl.state
import jax_impl.training
import torch_impl.models
import torch_impl.molecules.models
import torch_impl.state
import torch_impl.training
from ml_patterns import parity
from ml_patterns.checkpoint import read_metadata
from ml_patterns.molecules.config import ModelConfig
from parity_tests import tolerances
from parity_tests.test_models import config_for, real_batch

FORWARD = parity.Tolerance(rtol=tolerances.FORWARD.rtol, atol=tolerances.FORWARD.atol)
SIDES = {"torch": torch_impl, "jax": jax_impl}


def forward(side: str, model, batch: dict) -> dict:
    impl = SIDES[side]
    model.eval()
    if side == "torch":
        with torch.no_grad():
            return impl.state.tree_to_numpy(model(impl.training.to_device(batch)))
    return impl.state.tree_to_numpy(model(impl.training.to_device(batch)))


@pytest.mark.parametrize("architecture", ["multitask", "autoencoder"])
@pytest.mark.parametrize("writer, reader", [("torch", "jax"), ("jax", "torch")])
def test_a_checkpoint_loads_into_the_other_backend(writer, reader, architecture, default_dataset, tmp_path):
    config = config_for(default_dataset[1], architecture, seed=5)
    batch = real_batch(default_dataset[0], config, seed=2)
    original = SIDES[writer].molecules.models.build_model(config)
    path = tmp_path / f"{writer}.safetensors"
    original.save(path)
    assert read_metadata(path)["backend"] == writer

    loaded = SIDES[reader].molecules.models.load_model(path)
    assert loaded.config == config and type(loaded).__name__ == type(original).__name__
    written, read = SIDES[writer].state.to_numpy(original), SIDES[reader].state.to_numpy(loaded)
    assert sorted(written) == sorted(read)
    assert all(written[name].tobytes() == read[name].tobytes() for name in written)

    report = parity.compare(
        forward(writer, original, batch), forward(reader, loaded, batch), FORWARD, names=(writer, reader)
    )
    report.raise_if_failed()


def test_load_into_an_existing_model_of_the_other_backend(default_dataset, tmp_path):
    config = config_for(default_dataset[1], "multitask")
    jax_model = jax_impl.molecules.models.build_model(ModelConfig(**{**config.__dict__, "seed": 11}))
    jax_model.save(tmp_path / "jax.safetensors")
    torch_model = torch_impl.molecules.models.build_model(config).load(tmp_path / "jax.safetensors")
    expected = jax_impl.state.to_numpy(jax_model)
    assert all(np.array_equal(torch_impl.state.to_numpy(torch_model)[k], v) for k, v in expected.items())


@pytest.mark.parametrize("writer, reader", [("torch", "jax"), ("jax", "torch")])
def test_generic_compositions_of_plain_layers_cross_backends(writer, reader, tmp_path):
    """The seed's EncoderDecoder and MultiTaskModel built from plain Linear layers on each side share
    one checkpoint: same names, transposed kernels, outputs within the forward tolerance."""

    def build(side: str, seed: int):
        if side == "torch":
            torch.manual_seed(seed)
            linear = torch.nn.Linear
        else:
            rngs = nnx.Rngs(seed)

            def linear(d_in, d_out):
                return nnx.Linear(d_in, d_out, rngs=rngs)

        models = SIDES[side].models
        return (
            models.EncoderDecoder(linear(8, 3), linear(3, 8)),
            models.MultiTaskModel(linear(8, 4), {"a": linear(4, 1), "b": linear(4, 2)}),
        )

    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)

    def run(side: str, model) -> dict:
        if side == "torch":
            with torch.no_grad():
                out = model(torch.from_numpy(x))
        else:
            out = model(jax.numpy.asarray(x))
        out = out if isinstance(out, dict) else {"out": out}
        return SIDES[side].state.tree_to_numpy(out)

    for i, (original, target) in enumerate(zip(build(writer, 0), build(reader, 1))):
        original.save(tmp_path / f"{i}.safetensors")
        target.load(tmp_path / f"{i}.safetensors")
        written, read = SIDES[writer].state.to_numpy(original), SIDES[reader].state.to_numpy(target)
        assert sorted(written) == sorted(read) and all(written[k].tobytes() == read[k].tobytes() for k in written)
        report = parity.compare(run(writer, original), run(reader, target), FORWARD, names=(writer, reader))
        report.raise_if_failed()
