"""The models on each backend alone: shapes, task selection, masking, causality, dropout modes,
seeding. Cross-backend agreement is parity_tests/test_models.py's."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import jax_impl.models
import jax_impl.molecules.models
import jax_impl.training
import torch_impl.models
import torch_impl.molecules.models
import torch_impl.training
from jax_impl import state as jax_state
from ml_patterns.molecules.batches import prepare_batch
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.molecules.masking import FIRST_REGULAR_ID
from ml_patterns.molecules.tokenizer import BOS_ID, EOS_ID, PAD_ID
from torch_impl import state as torch_state

IMPLS = (torch_impl, jax_impl)
IDS = ("torch", "jax")
VOCAB, LENGTH = 30, 12


def tiny(**overrides) -> ModelConfig:
    fields = dict(
        vocab_size=VOCAB,
        d_model=16,
        n_heads=2,
        n_layers=1,
        n_decoder_layers=1,
        d_ff=32,
        max_len=24,
        tasks=("a", "b"),
        target_mean=(0.0, 1.0),
        target_std=(1.0, 2.0),
    )
    return ModelConfig(**{**fields, **overrides})


def numpy_batch(config: ModelConfig, seed: int = 0, lengths=(12, 5, 3, 9)) -> dict:
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), LENGTH), PAD_ID, dtype=np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = [BOS_ID, *rng.integers(FIRST_REGULAR_ID, VOCAB, size=n - 2), EOS_ID]
    collated = {
        "input_ids": ids,
        "attention_mask": ids != PAD_ID,
        "labels": {"a": rng.normal(size=len(lengths)), "b": rng.normal(size=len(lengths))},
    }
    return prepare_batch(collated, config, rng)


def build(impl, config):
    model = impl.molecules.models.build_model(config)
    model.eval()
    return model


def value(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def run(impl, model, batch, **kwargs) -> dict:
    out = model(impl.training.to_device(batch), **kwargs)
    return (torch_state if impl is torch_impl else jax_state).tree_to_numpy(out)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_multitask_outputs_and_losses(impl):
    config = tiny()
    model, batch = build(impl, config), numpy_batch(config)
    out = run(impl, model, batch)
    assert list(out) == ["a", "b", "mlm"]
    assert out["a"].shape == (4,) and out["mlm"].shape == (4, LENGTH, VOCAB)
    total, parts = model.loss_parts(impl.training.to_device(batch))
    assert list(parts) == ["a", "b", "mlm"]
    assert value(total) == pytest.approx(value(parts["a"]) + value(parts["b"]) + value(parts["mlm"]), rel=1e-6)
    assert value(model.compute_loss(impl.training.to_device(batch))) == value(total)
    # Regression losses are MSE in standardized units.
    expected = np.mean((out["a"] - batch["labels"]["a"]) ** 2)
    assert value(parts["a"]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_a_named_task_returns_that_head_alone(impl):
    config = tiny()
    model, batch = build(impl, config), numpy_batch(config)
    everything = run(impl, model, batch)
    for task in ("a", "mlm"):
        one = run(impl, model, batch, task=task)
        assert list(one) == [task]
        np.testing.assert_array_equal(one[task], everything[task])
    with pytest.raises(KeyError, match=r"unknown task 'logP'; known tasks: \['a', 'b', 'mlm'\]"):
        model(impl.training.to_device(batch), task="logP")


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_mlm_weight_weighs_the_masked_token_loss_and_zero_drops_the_head(impl):
    batch = numpy_batch(tiny())
    one = build(impl, tiny()).loss_parts(impl.training.to_device(batch))
    half = build(impl, tiny(mlm_weight=0.5)).loss_parts(impl.training.to_device(batch))
    assert value(half[0]) == pytest.approx(value(one[0]) - 0.5 * value(one[1]["mlm"]), rel=1e-6)
    no_mlm = build(impl, tiny(mlm_weight=0.0))
    assert list(run(impl, no_mlm, numpy_batch(tiny(mlm_weight=0.0)))) == ["a", "b"]


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_padding_is_invisible(impl):
    """Extra PAD columns change no real position's output: keys masked, pooling over real tokens."""
    config = tiny(architecture="autoencoder")
    model, batch = build(impl, config), numpy_batch(config)
    wider = {
        k: np.pad(v, ((0, 0), (0, 6)), constant_values=PAD_ID if v.dtype != np.bool_ else False)
        for k, v in batch.items()
    }
    narrow, wide = run(impl, model, batch), run(impl, model, wider)
    np.testing.assert_allclose(wide["pooled"], narrow["pooled"], atol=1e-6)
    real = batch["decoder_mask"]
    np.testing.assert_allclose(wide["logits"][:, : real.shape[1]][real], narrow["logits"][real], atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_the_decoder_is_causal(impl):
    """Changing decoder input token t changes no logit before t."""
    config = tiny(architecture="autoencoder")
    model, batch = build(impl, config), numpy_batch(config)
    changed = {k: v.copy() for k, v in batch.items()}
    changed["decoder_input_ids"][:, 6] = FIRST_REGULAR_ID + (changed["decoder_input_ids"][:, 6] + 1) % 10
    before, after = run(impl, model, batch)["logits"], run(impl, model, changed)["logits"]
    np.testing.assert_array_equal(after[:, :6], before[:, :6])
    assert np.abs(after[0, 6:] - before[0, 6:]).max() > 1e-4


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_encoder_decoder_parts(impl):
    config = tiny(architecture="autoencoder")
    model, batch = build(impl, config), impl.training.to_device(numpy_batch(config))
    encoded = model.encode(batch)
    assert set(encoded) == {"hidden", "pooled"} and tuple(encoded["pooled"].shape) == (4, 16)
    decoded = model.decode(encoded, batch)
    assert tuple(decoded["logits"].shape) == (4, LENGTH - 1, VOCAB)
    total, parts = model.loss_parts(batch)
    assert list(parts) == ["reconstruction"] and value(total) == value(parts["reconstruction"])
    assert 0 < value(total) < 2 * np.log(VOCAB)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_a_batch_longer_than_max_len_is_refused(impl):
    config = tiny(max_len=LENGTH)
    model = build(impl, tiny(max_len=8))
    with pytest.raises(ValueError, match="sequence length 12 exceeds the model's max_len 8"):
        model(impl.training.to_device(numpy_batch(config)))


def test_torch_dropout_train_and_eval():
    config = tiny(dropout=0.3, attention_dropout=0.3)
    model, batch = torch_impl.molecules.models.build_model(config), torch_impl.training.to_device(numpy_batch(config))
    assert model.training  # built in training mode, as torch modules are
    a, b = model(batch)["a"], model(batch)["a"]
    assert not torch.equal(a, b)
    model.eval()
    torch.testing.assert_close(model(batch)["a"], model(batch)["a"], rtol=0, atol=0)


def test_jax_functional_form_is_pure_given_a_key():
    config = tiny(dropout=0.3, attention_dropout=0.3)
    model, batch = jax_impl.molecules.models.build_model(config), jax_impl.training.to_device(numpy_batch(config))
    fn, params, rest = jax_impl.models.functional(model)
    loss = jax.jit(fn.loss, static_argnames="train")
    key = jax.random.key(7)
    first, again = loss(params, rest, batch, key=key, train=True), loss(params, rest, batch, key=key, train=True)
    other = loss(params, rest, batch, key=jax.random.key(8), train=True)
    assert float(first[0]) == float(again[0]) and float(first[0]) != float(other[0])
    evaluated = loss(params, rest, batch)  # train=False: no dropout, no key
    model.eval()
    assert float(evaluated[0]) == pytest.approx(float(model.compute_loss(batch)), rel=1e-6)
    with pytest.raises(ValueError, match="needs a dropout key"):
        fn.loss(params, rest, batch, train=True)
    assert isinstance(fn.merge(params, rest), jax_impl.models.MultiTaskModel)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_build_model_is_seeded(impl):
    to_numpy = (torch_state if impl is torch_impl else jax_state).to_numpy
    a, b, c = (to_numpy(impl.molecules.models.build_model(tiny(seed=s))) for s in (0, 0, 1))
    name = "backbone.layers.0.attention.q_proj.weight"
    np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a[name], c[name])


def test_torch_build_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    torch_impl.molecules.models.build_model(tiny())
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_init_follows_the_init_pattern(impl):
    """xavier-uniform Linear kernels, N(0, 0.02) embeddings, LayerNorm ones/zeros, zero biases."""
    arrays = (torch_state if impl is torch_impl else jax_state).to_numpy(impl.molecules.models.build_model(tiny()))
    weight = arrays["backbone.layers.0.feed_forward.linear1.weight"]  # [32, 16]
    assert np.abs(weight).max() <= np.sqrt(6 / (16 + 32)) and weight.std() == pytest.approx(
        np.sqrt(2 / (16 + 32)), rel=0.1
    )
    assert arrays["backbone.embeddings.positions.weight"].std() == pytest.approx(0.02, rel=0.1)  # 24 x 16 draws
    assert (arrays["backbone.final_norm.weight"] == 1).all() and (arrays["backbone.final_norm.bias"] == 0).all()
    assert (arrays["backbone.layers.0.attention.q_proj.bias"] == 0).all()


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_multitask_model_needs_a_head(impl):
    kwargs = {} if impl is torch_impl else {"rngs": nnx.Rngs(0)}
    backbone = impl.molecules.models.SmilesEncoder(tiny(), **kwargs)
    with pytest.raises(ValueError, match="at least one head"):
        impl.models.MultiTaskModel(backbone, {})


# ---- the generic compositions, as the seed writes them ------------------------------------------


def linear(impl, d_in: int, d_out: int, seed: int = 0):
    if impl is torch_impl:
        torch.manual_seed(seed)
        return torch.nn.Linear(d_in, d_out)
    return nnx.Linear(d_in, d_out, rngs=nnx.Rngs(seed))


def as_numpy(x) -> np.ndarray:
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def array(impl, values: np.ndarray):
    return torch.from_numpy(values) if impl is torch_impl else jax.numpy.asarray(values)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_generic_encoder_decoder_on_plain_arrays(impl):
    model = impl.models.EncoderDecoder(linear(impl, 8, 3), linear(impl, 3, 8, seed=1))
    x = array(impl, np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32))
    z = model.encode(x)
    assert tuple(z.shape) == (5, 3)
    assert tuple(model.decode(z).shape) == (5, 8)
    np.testing.assert_array_equal(as_numpy(model(x)), as_numpy(model.decode(model.encode(x))))


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_generic_multitask_model_with_plain_heads(impl):
    heads = {"a": linear(impl, 4, 1, seed=1), "b": linear(impl, 4, 2, seed=2)}
    model = impl.models.MultiTaskModel(linear(impl, 8, 4), heads)
    x = array(impl, np.ones((3, 8), np.float32))
    out = model(x)
    assert list(out) == ["a", "b"] and tuple(out["a"].shape) == (3, 1) and tuple(out["b"].shape) == (3, 2)
    one = model(x, task="b")
    assert list(one) == ["b"]
    np.testing.assert_array_equal(as_numpy(one["b"]), as_numpy(out["b"]))
    with pytest.raises(KeyError, match=r"unknown task 'c'; known tasks: \['a', 'b'\]"):
        model(x, task="c")
    names = set((torch_state if impl is torch_impl else jax_state).to_numpy(model))
    assert names == {f"{part}.{leaf}" for part in ("backbone", "heads.a", "heads.b") for leaf in ("weight", "bias")}


def mse(impl):
    return torch.nn.functional.mse_loss if impl is torch_impl else (lambda a, b: jax.numpy.mean((a - b) ** 2))


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_a_generic_model_gets_its_loss_from_loss_fn_or_a_subclass(impl):
    x = array(impl, np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32))
    batch = {"x": x}
    bare = impl.models.EncoderDecoder(linear(impl, 8, 3), linear(impl, 3, 8))
    with pytest.raises(NotImplementedError, match="EncoderDecoder has no loss: pass loss_fn="):
        bare.compute_loss(batch)

    def reconstruction(model, batch):
        return mse(impl)(model(batch["x"]), batch["x"])

    with_fn = impl.models.EncoderDecoder(linear(impl, 8, 3), linear(impl, 3, 8), loss_fn=reconstruction)
    expected = float(np.mean((as_numpy(with_fn(x)) - as_numpy(x)) ** 2))
    assert value(with_fn.compute_loss(batch)) == pytest.approx(expected, rel=1e-6)
    total, parts = with_fn.loss_parts(batch)
    assert parts == {} and value(total) == value(with_fn.compute_loss(batch))

    class Reconstruct(impl.models.EncoderDecoder):  # the seed's way: a subclass defines compute_loss
        def compute_loss(self, batch):
            return reconstruction(self, batch)

    sub = Reconstruct(with_fn.encoder, with_fn.decoder)
    assert value(sub.compute_loss(batch)) == value(with_fn.compute_loss(batch))
    assert value(sub.loss_parts(batch)[0]) == value(with_fn.compute_loss(batch))

    def with_parts(model, batch):
        loss = mse(impl)(model(batch["x"])["a"], batch["x"])
        return loss, {"a": loss}

    parted = impl.models.MultiTaskModel(linear(impl, 8, 4), {"a": linear(impl, 4, 8)}, loss_fn=with_parts)
    total, parts = parted.loss_parts(batch)
    assert list(parts) == ["a"] and value(total) == value(parts["a"])


def test_jax_generic_model_with_loss_fn_differentiates_under_jit():
    model = jax_impl.models.EncoderDecoder(
        linear(jax_impl, 8, 3), linear(jax_impl, 3, 8), loss_fn=lambda m, b: jax.numpy.mean((m(b["x"]) - b["x"]) ** 2)
    )
    batch = {"x": jax.numpy.ones((2, 8))}
    loss, grads = nnx.jit(nnx.value_and_grad(lambda m, b: m.compute_loss(b)))(model, batch)
    assert float(loss) == pytest.approx(float(model.compute_loss(batch)), rel=1e-6)
    kernel_grad = grads["encoder"]["kernel"][...]
    assert kernel_grad.shape == (8, 3) and float(jax.numpy.abs(kernel_grad).sum()) > 0


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_the_molecule_models_are_the_generic_compositions(impl):
    multitask, autoencoder = build(impl, tiny()), build(impl, tiny(architecture="autoencoder"))
    assert isinstance(multitask, impl.models.MultiTaskModel) and isinstance(autoencoder, impl.models.EncoderDecoder)
    assert type(multitask).__name__ == "SmilesMultiTaskModel" and type(autoencoder).__name__ == "SmilesAutoencoder"
