"""Portable checkpoints: the format (ml_patterns.checkpoint) and save/load on each backend.
Loading across backends, with identical outputs, is parity_tests/test_checkpoints.py's."""

import json
import os
import pickle
import struct

import numpy as np
import pytest
from safetensors import safe_open

import jax_impl.models
import jax_impl.molecules.models
import jax_impl.state
import torch_impl.models
import torch_impl.molecules.models
import torch_impl.state
from ml_patterns import checkpoint
from ml_patterns.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from ml_patterns.molecules.config import ModelConfig

BACKENDS = ((torch_impl.molecules.models, torch_impl.state), (jax_impl.molecules.models, jax_impl.state))
IDS = ("torch", "jax")
CONFIG = ModelConfig(vocab_size=30, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=24,
                     tasks=("a",), target_mean=(0.5,), target_std=(2.0,))


def arrays():
    rng = np.random.default_rng(0)
    return {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": np.arange(4, dtype=np.float32)}


def write(path, **kwargs):
    defaults = dict(backend="torch", model_class="Toy", config=CONFIG, versions={"torch": "x"})
    return save_checkpoint(path, arrays(), **{**defaults, **kwargs})


def test_round_trip_and_metadata(tmp_path):
    path = write(tmp_path / "ckpt" / "model.safetensors")  # parent directories are created
    loaded, metadata = load_checkpoint(path)
    for name, value in arrays().items():
        np.testing.assert_array_equal(loaded[name], value)
    assert metadata["format"] == checkpoint.FORMAT and metadata["backend"] == "torch"
    assert metadata["model_class"] == "Toy"
    assert ModelConfig.from_dict(metadata["config"]) == CONFIG
    assert {"torch", "numpy", "safetensors", "ml-patterns", "python"} <= set(metadata["versions"])
    assert read_metadata(path) == metadata
    # A plain safetensors file: any reader sees the tensors and the JSON metadata.
    with safe_open(str(path), framework="np") as handle:
        assert sorted(handle.keys()) == ["b", "w"]
        assert json.loads(handle.metadata()["ml_patterns"])["backend"] == "torch"


def test_non_contiguous_and_bfloat16_arrays_are_stored_canonically(tmp_path):
    import ml_dtypes

    kernel = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = save_checkpoint(tmp_path / "m.safetensors", {"t": kernel.T, "h": kernel.astype(ml_dtypes.bfloat16)},
                           backend="jax", model_class="Toy", config=None, versions={})
    loaded, metadata = load_checkpoint(path)
    np.testing.assert_array_equal(loaded["t"], kernel.T)  # a transposed view, written in its own layout
    assert loaded["h"].dtype == np.float32 and metadata["config"] is None


def test_an_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = write(tmp_path / "model.safetensors")
    before = path.read_bytes()

    def crash(fd):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": np.zeros(2, np.float32)}, backend="jax", model_class="Toy", config=None, versions={})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temporary left behind


@pytest.mark.parametrize("cut", [0, 5, 8, 40, -1], ids=["empty", "in-size", "no-header", "in-header", "in-data"])
def test_a_truncated_file_is_refused(tmp_path, cut):
    path = write(tmp_path / "model.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1] if cut == -1 else data[:cut])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated"):
        load_checkpoint(path)


def test_a_flipped_byte_in_the_data_is_caught_by_the_checksum(tmp_path):
    path = write(tmp_path / "model.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        load_checkpoint(path)


def test_a_corrupt_header_is_refused(tmp_path):
    path = write(tmp_path / "model.safetensors")
    data = bytearray(path.read_bytes())
    data[8] = ord("[")  # the header's opening brace
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt header"):
        load_checkpoint(path)


def test_a_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_foreign_or_future_files_are_refused(tmp_path):
    from safetensors.numpy import save_file

    plain = tmp_path / "plain.safetensors"
    save_file(arrays(), str(plain))
    with pytest.raises(CheckpointError, match="without ml-patterns metadata"):
        load_checkpoint(plain)
    future = tmp_path / "future.safetensors"
    save_file(arrays(), str(future), metadata={"ml_patterns": json.dumps({"format": "ml-patterns-checkpoint/9"})})
    with pytest.raises(CheckpointError, match="unsupported checkpoint format 'ml-patterns-checkpoint/9'"):
        load_checkpoint(future)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_a_header_size_beyond_the_file_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(CheckpointError, match="header of 1000000 bytes claimed, file has 10"):
        read_metadata(path)


@pytest.mark.parametrize("models, state", BACKENDS, ids=IDS)
def test_model_save_load_and_load_model(models, state, tmp_path):
    model = models.build_model(CONFIG)
    model.save(tmp_path / "model.safetensors")
    metadata = read_metadata(tmp_path / "model.safetensors")
    assert metadata["backend"] == IDS[BACKENDS.index((models, state))]
    assert metadata["model_class"] == "MultiTaskModel"
    expected = state.to_numpy(model)
    other = models.build_model(ModelConfig(**{**CONFIG.__dict__, "seed": 3}))
    assert other.load(tmp_path / "model.safetensors") is other
    rebuilt = models.load_model(tmp_path / "model.safetensors")
    assert rebuilt.config == CONFIG
    for loaded in (state.to_numpy(other), state.to_numpy(rebuilt)):
        assert all(np.array_equal(loaded[name], expected[name]) for name in expected)


@pytest.mark.parametrize("models, state", BACKENDS, ids=IDS)
def test_loading_weights_of_another_architecture_lists_the_keys(models, state, tmp_path):
    models.build_model(CONFIG).save(tmp_path / "model.safetensors")
    autoencoder = models.build_model(ModelConfig(**{**CONFIG.__dict__, "architecture": "autoencoder"}))
    with pytest.raises(checkpoint.WeightMismatchError, match=r"model\.safetensors do not fit the model; missing 60: decoder") as caught:
        autoencoder.load(tmp_path / "model.safetensors")
    assert "encoder.layers.0.attention.q_proj.weight" in caught.value.missing
    assert "heads.a.out.bias" in caught.value.unexpected and "unexpected 30" in str(caught.value)


@pytest.mark.parametrize("models, state", BACKENDS, ids=IDS)
def test_a_model_without_config_saves_but_cannot_be_rebuilt(models, state, tmp_path):
    model = models.build_model(CONFIG)
    model.config = None
    model.save(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="stores no ModelConfig"):
        models.load_model(tmp_path / "model.safetensors")
