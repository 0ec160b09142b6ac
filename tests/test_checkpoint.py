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
CONFIG = ModelConfig(
    vocab_size=30,
    d_model=16,
    n_heads=2,
    n_layers=1,
    d_ff=32,
    max_len=24,
    tasks=("a",),
    target_mean=(0.5,),
    target_std=(2.0,),
)


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
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        {"t": kernel.T, "h": kernel.astype(ml_dtypes.bfloat16)},
        backend="jax",
        model_class="Toy",
        config=None,
        versions={},
    )
    loaded, metadata = load_checkpoint(path)
    np.testing.assert_array_equal(loaded["t"], kernel.T)  # a transposed view, written in its own layout
    assert loaded["h"].dtype == np.float32 and metadata["config"] is None


def test_an_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = write(tmp_path / "model.safetensors")
    before = path.read_bytes()

    def crash(fd):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt, match="killed while writing"):
        save_checkpoint(
            path, {"w": np.zeros(2, np.float32)}, backend="jax", model_class="Toy", config=None, versions={}
        )
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


def test_integer_and_bool_arrays_keep_their_dtype_under_the_checksum(tmp_path):
    """A BatchNorm's int64 count is stored as it is (not widened to float), and covered by the checksum."""
    stored = {"norm.num_batches_tracked": np.array(7, np.int64), "w": np.ones(2, np.float32), "flags": np.array([True])}
    path = save_checkpoint(
        tmp_path / "m.safetensors", stored, backend="torch", model_class="Toy", config=None, versions={}
    )
    loaded, _ = load_checkpoint(path)
    assert {name: loaded[name].dtype for name in stored} == {name: value.dtype for name, value in stored.items()}
    assert loaded["norm.num_batches_tracked"] == 7
    data = bytearray(path.read_bytes())
    (size,) = struct.unpack("<Q", data[:8])
    start = 8 + size + json.loads(data[8 : 8 + size])["norm.num_batches_tracked"]["data_offsets"][0]
    data[start] ^= 0x01  # 7 -> 6: a valid int64, caught only by the checksum
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
    with pytest.raises(CheckpointError, match=r"model\.safetensors: this is a pickle .*, not safetensors"):
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
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
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
    assert metadata["model_class"] == "SmilesMultiTaskModel"
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
    with pytest.raises(
        checkpoint.WeightMismatchError, match=r"model\.safetensors do not fit the model; missing 60: decoder"
    ) as caught:
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


# ---- files written by the seed's torch.save(state_dict) ------------------------------------------


def torch_pair():
    import torch

    torch.manual_seed(0)
    source = torch_impl.models.EncoderDecoder(torch.nn.Linear(8, 3), torch.nn.Linear(3, 8))
    torch.manual_seed(1)
    target = torch_impl.models.EncoderDecoder(torch.nn.Linear(8, 3), torch.nn.Linear(3, 8))
    return source, target


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-pickle"])
def test_torch_loads_a_torch_save_state_dict(tmp_path, zip_format):
    import torch

    source, target = torch_pair()
    path = tmp_path / "model.pt"
    torch.save(source.state_dict(), path, _use_new_zipfile_serialization=zip_format)
    assert target.load(path, "cpu") is target  # the seed's load(path, device)
    expected = torch_impl.state.to_numpy(source)
    assert all(np.array_equal(torch_impl.state.to_numpy(target)[k], v) for k, v in expected.items())


def test_jax_and_the_core_refuse_a_torch_save_file_naming_the_conversion(tmp_path):
    import torch

    source, _ = torch_pair()
    torch.save(source.state_dict(), tmp_path / "model.pt")
    convert = (
        r"this is a PyTorch torch\.save file, not safetensors; "
        r"convert it with `ml-patterns convert .*model\.pt OUT\.safetensors`"
    )
    with pytest.raises(CheckpointError, match=convert):
        load_checkpoint(tmp_path / "model.pt")
    jax_model = jax_impl.models.EncoderDecoder(nnx_linear(8, 3), nnx_linear(3, 8))
    with pytest.raises(CheckpointError, match=convert):
        jax_model.load(tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="model.pt: this is a PyTorch torch.save file"):
        read_metadata(tmp_path / "model.pt")


def nnx_linear(d_in, d_out):
    from flax import nnx

    return nnx.Linear(d_in, d_out, rngs=nnx.Rngs(0))


def test_convert_a_torch_file_for_both_backends(tmp_path):
    import torch

    source, target = torch_pair()
    torch.save(source.state_dict(), tmp_path / "model.pt")
    out = torch_impl.state.convert_torch_file(tmp_path / "model.pt", tmp_path / "model.safetensors")
    assert out == tmp_path / "model.safetensors" and checkpoint.sniff(out) == "safetensors"
    assert read_metadata(out)["config"] is None
    expected = torch_impl.state.to_numpy(source)
    jax_model = jax_impl.models.EncoderDecoder(nnx_linear(8, 3), nnx_linear(3, 8)).load(out, "cpu")
    assert all(np.array_equal(jax_impl.state.to_numpy(jax_model)[k], v) for k, v in expected.items())
    target.load(out)
    assert all(np.array_equal(torch_impl.state.to_numpy(target)[k], v) for k, v in expected.items())


def test_a_torch_file_that_is_not_a_state_dict_of_tensors_is_refused(tmp_path):
    import torch

    source, target = torch_pair()
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "bundle.pt")
    expected = (
        r"bundle\.pt: not a state_dict of tensors: 2 entries are not tensors: "
        r"'model' \(OrderedDict\), 'epoch' \(int\); save model.state_dict\(\) alone"
    )
    with pytest.raises(CheckpointError, match=expected):
        target.load(tmp_path / "bundle.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: holds a list, not a state_dict"):
        torch_impl.state.convert_torch_file(tmp_path / "list.pt", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_torch_never_unpickles_objects_from_a_torch_file(tmp_path):
    import torch

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    _, target = torch_pair()
    for name, protocol_file in (("zip.pt", True), ("legacy.pt", False)):
        torch.save({"w": Exploit()}, tmp_path / name, _use_new_zipfile_serialization=protocol_file)
        expected = rf"{name}: a PyTorch file that torch.load\(weights_only=True\) cannot read"
        with pytest.raises(CheckpointError, match=expected):
            target.load(tmp_path / name)
    assert not marker.exists()


def test_garbage_is_named_as_not_a_safetensors_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"hello, this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"not a safetensors file \(it starts with b'hello, this is n'"):
        load_checkpoint(path)
    _, target = torch_pair()
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        target.load(path)


@pytest.mark.parametrize("header_size", [640, 896, 1152, 1408])  # 0x80 + 256k: first bytes 80 0k, pickle's PROTO k
def test_a_safetensors_header_size_that_starts_like_a_pickle_is_safetensors(tmp_path, header_size):
    from safetensors.numpy import save

    for padding in range(header_size):
        data = save({"w": np.zeros(2, np.float32)}, metadata={"p": "x" * padding})
        if struct.unpack("<Q", data[:8])[0] == header_size:
            break
    else:
        pytest.fail(f"no padding gives a {header_size}-byte header")
    (tmp_path / "w.safetensors").write_bytes(data)
    assert checkpoint.sniff(tmp_path / "w.safetensors") == "safetensors"
