"""Weight transfer on each backend: canonical arrays out, back in, and the one error for bad keys.
The cross-backend round trip (torch -> JAX -> torch, bit-exact) is in parity_tests/test_models.py."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl.models
import jax_impl.molecules.models
import jax_impl.state
import torch_impl.models
import torch_impl.molecules.models
import torch_impl.state
from ml_patterns.checkpoint import WeightMismatchError
from ml_patterns.molecules.config import ModelConfig

BACKENDS = ((torch_impl.molecules.models, torch_impl.state), (jax_impl.molecules.models, jax_impl.state))
IDS = ("torch", "jax")
CONFIG = ModelConfig(vocab_size=30, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=24,
                     tasks=("a",), target_mean=(0.0,), target_std=(1.0,))
Q = "backbone.layers.0.attention.q_proj.weight"


@pytest.mark.parametrize("models, state", BACKENDS, ids=IDS)
def test_round_trip_within_a_backend_is_exact(models, state):
    source = state.to_numpy(models.build_model(CONFIG))
    target = models.build_model(ModelConfig(**{**CONFIG.__dict__, "seed": 1}))
    assert not np.array_equal(state.to_numpy(target)[Q], source[Q])
    state.from_numpy(target, source)
    back = state.to_numpy(target)
    assert list(back) == list(source)
    for name in source:
        assert back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name], source[name])


@pytest.mark.parametrize("models, state", BACKENDS, ids=IDS)
def test_exported_arrays_are_copies(models, state):
    model = models.build_model(CONFIG)
    arrays = state.to_numpy(model)
    before = arrays[Q].copy()
    arrays[Q][...] = 0.0  # writable, and writing does not reach the model
    np.testing.assert_array_equal(state.to_numpy(model)[Q], before)
    assert all(a.flags.c_contiguous and a.flags.writeable for a in arrays.values())


@pytest.mark.parametrize("models, state", BACKENDS, ids=IDS)
def test_one_error_lists_every_bad_key(models, state):
    model = models.build_model(CONFIG)
    arrays = state.to_numpy(model)
    before = arrays[Q].copy()
    del arrays["heads.a.out.bias"], arrays["backbone.final_norm.weight"]
    arrays["heads.b.out.bias"] = np.zeros(1, np.float32)
    arrays[Q] = np.zeros((16, 8), np.float32)
    arrays["backbone.layers.0.attention.k_proj.weight"] = arrays["backbone.layers.0.attention.k_proj.weight"].astype(np.int32)
    arrays["backbone.layers.0.attention.v_proj.weight"] = arrays[Q]
    with pytest.raises(WeightMismatchError) as caught:
        state.from_numpy(model, arrays, source="ckpt.safetensors")
    error = caught.value
    assert sorted(error.missing) == ["backbone.final_norm.weight", "heads.a.out.bias"]
    assert error.unexpected == ["heads.b.out.bias"]
    assert len(error.mismatched) == 3
    message = str(error)
    assert message.startswith("ckpt.safetensors do not fit the model")
    for fragment in ("missing 2", "unexpected 1", f"{Q} (shape [16, 8], expected [16, 16])",
                     "k_proj.weight (dtype int32, expected floating point)"):
        assert fragment in message
    np.testing.assert_array_equal(state.to_numpy(model)[Q], before)  # nothing was copied


def test_torch_loads_into_the_parameters_dtype():
    model = torch_impl.molecules.models.build_model(CONFIG).to(torch.bfloat16)
    arrays = torch_impl.state.to_numpy(torch_impl.molecules.models.build_model(CONFIG))
    torch_impl.state.from_numpy(model, arrays)
    assert model.get_parameter(Q).dtype == torch.bfloat16
    out = torch_impl.state.to_numpy(model)
    assert out[Q].dtype == np.float32  # bfloat16 widens exactly in the canonical dict
    np.testing.assert_array_equal(out[Q], arrays[Q].astype(ml_dtypes.bfloat16).astype(np.float32))


def test_jax_loads_into_the_parameters_dtype_and_reads_bfloat16_arrays():
    model = jax_impl.molecules.models.build_model(CONFIG)
    nnx.update(model, jax.tree.map(lambda p: p.astype(jnp.bfloat16), nnx.state(model, nnx.Param)))
    arrays = jax_impl.state.to_numpy(jax_impl.molecules.models.build_model(CONFIG))
    halved = {name: a.astype(ml_dtypes.bfloat16) for name, a in arrays.items()}
    jax_impl.state.from_numpy(model, halved)
    assert model.backbone.layers[0].attention.q_proj.kernel[...].dtype == jnp.bfloat16
    np.testing.assert_array_equal(jax_impl.state.to_numpy(model)[Q], halved[Q].astype(np.float32))


def test_jax_layout_rule():
    model = jax_impl.molecules.models.build_model(CONFIG)
    arrays = jax_impl.state.to_numpy(model)
    layer = model.backbone.layers[0]
    np.testing.assert_array_equal(arrays[Q], np.asarray(layer.attention.q_proj.kernel[...]).T)  # [out, in]
    np.testing.assert_array_equal(arrays["backbone.layers.0.norm1.weight"], np.asarray(layer.norm1.scale[...]))
    np.testing.assert_array_equal(arrays["backbone.embeddings.tokens.weight"],
                                  np.asarray(model.backbone.embeddings.tokens.embedding[...]))
    assert arrays["heads.a.out.weight"].shape == (1, 16)


def test_jax_to_numpy_maps_a_state_shaped_like_the_parameters():
    model = jax_impl.molecules.models.build_model(CONFIG)
    _, params, _ = jax_impl.models.functional(model)
    doubled = jax.tree.map(lambda p: 2 * p, params)
    arrays, twice = jax_impl.state.to_numpy(model), jax_impl.state.to_numpy(model, doubled)
    np.testing.assert_array_equal(twice[Q], 2 * arrays[Q])
    other = jax_impl.molecules.models.build_model(ModelConfig(**{**CONFIG.__dict__, "tasks": ("b",)}))
    with pytest.raises(KeyError, match="heads.b.dense.bias is not a parameter of SmilesMultiTaskModel"):
        jax_impl.state.to_numpy(model, nnx.state(other, nnx.Param))


def test_jax_builds_from_weights_without_initializing():
    arrays = torch_impl.state.to_numpy(torch_impl.molecules.models.build_model(CONFIG))
    model = jax_impl.molecules.models.build_model(CONFIG, weights=arrays)
    out = jax_impl.state.to_numpy(model)
    assert all(np.array_equal(out[name], arrays[name]) for name in arrays)
    # Every leaf is a real array: the dropout streams were reseeded out of the abstract build.
    leaves = jax.tree.leaves(nnx.state(model))
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
