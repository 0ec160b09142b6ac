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
import jax_impl.training
import torch_impl.models
import torch_impl.molecules.models
import torch_impl.state
import torch_impl.training
from ml_patterns.checkpoint import WeightMismatchError
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.optim import OptimizerConfig

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
    target_mean=(0.0,),
    target_std=(1.0,),
)
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
    arrays["backbone.layers.0.attention.k_proj.weight"] = arrays["backbone.layers.0.attention.k_proj.weight"].astype(
        np.int32
    )
    arrays["backbone.layers.0.attention.v_proj.weight"] = arrays[Q]
    with pytest.raises(WeightMismatchError) as caught:
        state.from_numpy(model, arrays, source="ckpt.safetensors")
    error = caught.value
    assert sorted(error.missing) == ["backbone.final_norm.weight", "heads.a.out.bias"]
    assert error.unexpected == ["heads.b.out.bias"]
    assert len(error.mismatched) == 3
    message = str(error)
    assert message.startswith("ckpt.safetensors do not fit the model")
    for fragment in (
        "missing 2",
        "unexpected 1",
        f"{Q} (shape [16, 8], expected [16, 16])",
        "k_proj.weight (dtype int32, expected floating point)",
    ):
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
    np.testing.assert_array_equal(
        arrays["backbone.embeddings.tokens.weight"], np.asarray(model.backbone.embeddings.tokens.embedding[...])
    )
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


# ---- BatchNorm: integer buffers, running statistics, a key only torch has ----------------------


class TorchNormed(torch_impl.models.BaseModel):
    """Linear -> BatchNorm -> Linear, named as JaxNormed is."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.hidden, self.norm, self.out = torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 1)

    def forward(self, x):
        return self.out(self.norm(self.hidden(x)))[:, 0]

    def compute_loss(self, batch):
        return ((self(batch["x"]) - batch["y"]) ** 2).mean()


class JaxNormed(jax_impl.models.BaseModel):
    def __init__(self, seed: int = 0):
        super().__init__()
        rngs = nnx.Rngs(seed)
        self.hidden, self.norm = nnx.Linear(4, 3, rngs=rngs), nnx.BatchNorm(3, rngs=rngs)
        self.out = nnx.Linear(3, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(self.norm(self.hidden(x)))[:, 0]

    def compute_loss(self, batch):
        return jnp.mean((self(batch["x"]) - batch["y"]) ** 2)


NORMED = {"torch": (TorchNormed, torch_impl.state), "jax": (JaxNormed, jax_impl.state)}
STATISTICS = ("norm.running_mean", "norm.running_var")


def normed_batches(n_batches=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, size=(8 * n_batches, 4)).astype(np.float32)
    y = x.sum(axis=1).astype(np.float32)
    return [{"x": x[i : i + 8], "y": y[i : i + 8]} for i in range(0, len(x), 8)]


def trained_torch_normed():
    model = TorchNormed()
    model(torch.from_numpy(normed_batches()[0]["x"]))  # training mode: the statistics and the count move
    return model


def test_torch_integer_buffers_load_by_kind_and_refuse_floats():
    arrays = torch_impl.state.to_numpy(trained_torch_normed())
    assert arrays["norm.num_batches_tracked"].dtype == np.int64 and arrays["norm.num_batches_tracked"] == 1
    target = TorchNormed(seed=1)
    torch_impl.state.from_numpy(target, {**arrays, "norm.num_batches_tracked": np.array(7, np.int32)})
    assert target.norm.num_batches_tracked.dtype == torch.int64 and target.norm.num_batches_tracked.item() == 7
    np.testing.assert_array_equal(target.norm.running_var.numpy(), arrays["norm.running_var"])
    wrong = {**arrays, "norm.num_batches_tracked": np.array(7.0, np.float32), "out.bias": np.zeros(1, np.int64)}
    with pytest.raises(WeightMismatchError) as caught:
        torch_impl.state.from_numpy(target, wrong, source="f.safetensors")
    assert caught.value.mismatched == [
        "norm.num_batches_tracked (dtype float32, expected integer)",
        "out.bias (dtype int64, expected floating point)",
    ]


def test_torch_keeps_its_own_count_when_a_file_lacks_it_and_only_a_batch_norm_may_lack_it():
    arrays = torch_impl.state.to_numpy(trained_torch_normed())
    del arrays["norm.num_batches_tracked"]  # as a JAX model writes it
    target = TorchNormed(seed=1)
    target.norm.num_batches_tracked.fill_(5)
    torch_impl.state.from_numpy(target, arrays)
    assert target.norm.num_batches_tracked.item() == 5
    np.testing.assert_array_equal(target.norm.running_mean.numpy(), arrays["norm.running_mean"])
    with pytest.raises(WeightMismatchError, match=r"unexpected 1: hidden\.num_batches_tracked"):
        torch_impl.state.from_numpy(target, {**arrays, "hidden.num_batches_tracked": np.array(1)})
    with pytest.raises(WeightMismatchError, match=r"missing 1: norm\.running_mean"):
        torch_impl.state.from_numpy(target, {k: v for k, v in arrays.items() if k != "norm.running_mean"})


def test_jax_batch_norm_layout_holds_the_running_statistics_under_torchs_names():
    model = JaxNormed()
    model(jnp.asarray(normed_batches()[0]["x"]))  # training mode: the statistics move
    arrays = jax_impl.state.to_numpy(model)
    torch_names = set(torch_impl.state.to_numpy(TorchNormed()))
    assert set(arrays) == torch_names - {"norm.num_batches_tracked"}
    np.testing.assert_array_equal(arrays["norm.running_mean"], np.asarray(model.norm.mean[...]))
    np.testing.assert_array_equal(arrays["norm.running_var"], np.asarray(model.norm.var[...]))
    np.testing.assert_array_equal(arrays["norm.weight"], np.asarray(model.norm.scale[...]))
    # values shaped like the parameters (gradients, optimizer slots) convert to the parameters' names
    _, params, _ = jax_impl.models.functional(model)
    assert set(jax_impl.state.to_numpy(model, params)) == set(arrays) - set(STATISTICS)


def test_jax_loads_statistics_ignores_torchs_count_and_can_load_parameters_alone():
    torch_arrays = torch_impl.state.to_numpy(trained_torch_normed())
    model = JaxNormed(seed=1)
    jax_impl.state.from_numpy(model, torch_arrays)  # num_batches_tracked: torch's alone, ignored
    np.testing.assert_array_equal(np.asarray(model.norm.mean[...]), torch_arrays["norm.running_mean"])
    params_only = {k: v for k, v in torch_arrays.items() if k not in (*STATISTICS, "norm.num_batches_tracked")}
    with pytest.raises(WeightMismatchError, match=r"missing 2: norm\.running_mean, norm\.running_var"):
        jax_impl.state.from_numpy(JaxNormed(seed=1), params_only)
    fresh = JaxNormed(seed=1)
    jax_impl.state.from_numpy(fresh, params_only, variables=(nnx.Param,))
    np.testing.assert_array_equal(np.asarray(fresh.norm.var[...]), np.ones(3, np.float32))  # untouched
    np.testing.assert_array_equal(jax_impl.state.to_numpy(fresh)["hidden.weight"], torch_arrays["hidden.weight"])
    with pytest.raises(WeightMismatchError, match=r"norm\.running_var \(dtype int64, expected floating point\)"):
        jax_impl.state.from_numpy(JaxNormed(), {**torch_arrays, "norm.running_var": np.ones(3, np.int64)})


def test_a_torch_batch_norm_checkpoint_loads_into_jax_and_back(tmp_path):
    source = trained_torch_normed()
    source.save(tmp_path / "torch.safetensors")
    jax_model = JaxNormed(seed=1).load(tmp_path / "torch.safetensors", "cpu")
    source.eval(), jax_model.eval()
    x = normed_batches(seed=1)[0]["x"]
    with torch.no_grad():
        expected = source(torch.from_numpy(x)).numpy()
    # Eval mode normalizes with the running statistics: equal outputs need them transferred.
    np.testing.assert_allclose(np.asarray(jax_model(jnp.asarray(x))), expected, rtol=1e-5, atol=1e-6)
    jax_model.save(tmp_path / "jax.safetensors")
    back = TorchNormed(seed=1).load(tmp_path / "jax.safetensors")
    written, read = torch_impl.state.to_numpy(source), torch_impl.state.to_numpy(back)
    assert all(np.array_equal(read[name], written[name]) for name in written if name != "norm.num_batches_tracked")
    assert read["norm.num_batches_tracked"] == 0  # the JAX file has no count: the loading model's own stays


@pytest.mark.parametrize("backend", NORMED)
def test_the_trainers_keep_the_running_statistics(backend, tmp_path):
    """restore_best_weights' snapshot/restore and a checkpoint resume (OptimizerConfig: its slots are
    named like the parameters alone) carry the statistics, on the model and in the trainer's state."""
    model_class, state = NORMED[backend]
    trainer_class = torch_impl.training.Trainer if backend == "torch" else jax_impl.training.Trainer
    batches = normed_batches()
    trainer = trainer_class(model_class(), OptimizerConfig("adam", learning_rate=0.01))
    trainer.fit(batches, None, 1)
    snapshot, loss = trainer.snapshot_weights(), trainer.evaluate(batches)
    trainer.save_checkpoint(tmp_path / "checkpoint")
    trainer.fit(batches, None, 2)
    assert trainer.evaluate(batches) != loss
    trainer.restore_weights(snapshot)
    assert trainer.evaluate(batches) == loss  # evaluation reads the restored statistics
    expected = state.to_numpy(trainer.model)
    resumed = trainer_class(model_class(seed=1), OptimizerConfig("adam", learning_rate=0.01))
    resumed.load_checkpoint(tmp_path / "checkpoint")
    loaded = state.to_numpy(resumed.model)
    assert all(np.array_equal(loaded[name], expected[name]) for name in expected)
    assert resumed.evaluate(batches) == loss
    assert any(not np.array_equal(expected[name], state.to_numpy(model_class())[name]) for name in STATISTICS)


def test_the_float64_twin_is_a_float64_copy_and_batches_follow():
    import torch

    from torch_impl.state import float64_batch, float64_twin

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    twin = float64_twin(model)
    assert all(p.dtype == torch.float64 for p in twin.parameters()) and twin[1].running_mean.dtype == torch.float64
    assert all(p.dtype == torch.float32 for p in model.parameters()), "the original is left as it was"
    np.testing.assert_array_equal(twin[0].weight.detach().numpy(), model[0].weight.detach().numpy())
    batch = {
        "x": np.ones((2, 3), np.float32),
        "ids": np.arange(2),
        "pair": (torch.ones(1), torch.ones(1, dtype=torch.int32)),
    }
    moved = float64_batch(batch)
    assert moved["x"].dtype == np.float64 and moved["ids"].dtype == batch["ids"].dtype
    assert moved["pair"][0].dtype == torch.float64 and moved["pair"][1].dtype == torch.int32
    assert twin(torch.from_numpy(moved["x"])).dtype == torch.float64
