"""Losses, each backend alone against its own framework's reference, plus the core's checks.

The cross-backend comparison (values and gradients on random inputs) is parity_tests/test_losses.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from jax_impl import losses as jax_losses
from jax_impl import state as jax_state
from ml_patterns import losses as core
from torch_impl import losses as torch_losses

IGNORE = -100


def _batch(seed=0, shape=(3, 5, 11), scale=3.0, p_masked=0.4):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=shape) * scale).astype(np.float32)
    targets = rng.integers(0, shape[-1], size=shape[:-1])
    mask = rng.random(shape[:-1]) > p_masked
    mask[0] = False  # one empty row
    targets[~mask] = IGNORE
    return logits, targets, mask


def _reference(logits, targets, weights, smoothing=0.0):
    """float64 numpy: sum(w * loss) / sum(w), loss with torch's label smoothing."""
    x = logits.astype(np.float64)
    logp = x - x.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    safe = np.where(weights != 0, targets, 0)
    nll = -np.take_along_axis(logp, safe[..., None], -1)[..., 0]
    loss = (1 - smoothing) * nll - smoothing * logp.mean(-1)
    return (weights * loss).sum() / weights.sum()


# ---- core ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("logits", "targets", "mask", "message"),
    [
        ((2, 3, 5), (2, 4), (2, 4), r"targets shape \(2, 4\) .* logits shape \(2, 3, 5\)"),
        ((2, 3, 5), (2, 3), (3, 2), r"mask shape \(3, 2\) must equal targets shape \(2, 3\)"),
        ((5,), (), (), r"at least 2 dimensions, got shape \(5,\)"),
        ((2, 3, 0), (2, 3), (2, 3), "empty vocab axis"),
    ],
)
def test_shape_mismatches_name_both_shapes(logits, targets, mask, message):
    with pytest.raises(ValueError, match=message):
        core.check_cross_entropy_args(
            logits, targets, mask, logits_kind="f", targets_kind="i", mask_kind="b", label_smoothing=0.0
        )


@pytest.mark.parametrize(
    ("kinds", "message"),
    [
        (("i", "i", "b"), "logits must be floating"),
        (("f", "f", "b"), "targets must be integer"),
        (("f", "i", "c"), "mask must be"),
    ],
)
def test_dtype_kinds_are_checked(kinds, message):
    with pytest.raises(ValueError, match=message):
        core.check_cross_entropy_args(
            (2, 3), (2,), (2,), logits_kind=kinds[0], targets_kind=kinds[1], mask_kind=kinds[2], label_smoothing=0.0
        )


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_label_smoothing_outside_unit_interval_is_refused(value):
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        core.check_label_smoothing(value)


# ---- torch ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_torch_matches_cross_entropy_with_ignore_index(smoothing):
    logits, targets, mask = _batch()
    ours_x = torch.tensor(logits, requires_grad=True)
    ours = torch_losses.masked_cross_entropy(
        ours_x, torch.tensor(targets), torch.tensor(mask), label_smoothing=smoothing
    )
    ours.backward()
    ref_x = torch.tensor(logits, requires_grad=True)
    ref = F.cross_entropy(
        ref_x.flatten(0, 1), torch.tensor(targets).flatten(), ignore_index=IGNORE, label_smoothing=smoothing
    )
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_x.grad, ref_x.grad, rtol=1e-5, atol=1e-7)
    assert ours.item() == pytest.approx(_reference(logits, targets, mask.astype(np.float64), smoothing), rel=1e-6)


def test_torch_gradcheck_in_float64_including_mask_weights_and_smoothing():
    rng = np.random.default_rng(0)
    # Positive weights only: gradcheck nudges each weight, and a nudged 0 would unmask a junk target.
    weights = torch.tensor(rng.uniform(0.5, 2.0, (2, 3)), requires_grad=True)
    x = torch.tensor(rng.normal(size=(2, 3, 4)), requires_grad=True)
    t = torch.tensor(rng.integers(0, 4, (2, 3)))
    assert torch.autograd.gradcheck(
        lambda x, w: torch_losses.masked_cross_entropy(x, t, w, label_smoothing=0.2), (x, weights)
    )


def test_torch_all_masked_is_zero_with_zero_gradients_where_torch_gives_nan():
    logits, targets, _ = _batch()
    mask = np.zeros(targets.shape, bool)
    x = torch.tensor(logits, requires_grad=True)
    loss = torch_losses.masked_cross_entropy(x, torch.tensor(np.full_like(targets, IGNORE)), torch.tensor(mask))
    loss.backward()
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    assert torch.count_nonzero(x.grad) == 0
    total, count = torch_losses.masked_cross_entropy_sum(x, torch.tensor(targets), torch.tensor(mask))
    assert total.item() == 0.0 and count.item() == 0.0
    # The behaviour we define differs from torch's own on purpose (PARITY.md):
    assert torch.isnan(F.cross_entropy(x.flatten(0, 1), torch.full((15,), IGNORE), ignore_index=IGNORE))


def test_torch_float_weights_weight_each_position():
    logits, targets, mask = _batch()
    weights = mask * np.random.default_rng(1).uniform(0.1, 3.0, size=mask.shape)
    ours = torch_losses.masked_cross_entropy(
        torch.tensor(logits), torch.tensor(targets), torch.tensor(weights, dtype=torch.float32)
    )
    assert ours.item() == pytest.approx(_reference(logits, targets, weights), rel=2e-6)
    total, count = torch_losses.masked_cross_entropy_sum(
        torch.tensor(logits), torch.tensor(targets), torch.tensor(mask.astype(np.int32))
    )
    assert count.item() == mask.sum()
    assert (total / count).item() == pytest.approx(_reference(logits, targets, mask.astype(np.float64)), rel=1e-6)


def test_torch_sum_form_aggregates_exactly_across_batches():
    parts = [_batch(seed) for seed in range(3)]
    sums, counts = zip(*(torch_losses.masked_cross_entropy_sum(*map(torch.tensor, p)) for p in parts))
    joined = [np.concatenate(arrays) for arrays in zip(*parts)]
    whole = torch_losses.masked_cross_entropy(*map(torch.tensor, joined))
    torch.testing.assert_close(sum(sums) / sum(counts), whole, rtol=1e-6, atol=0.0)


def test_torch_out_of_range_unmasked_target_raises_naming_the_position():
    logits, targets, mask = _batch()
    mask[1, 2], targets[1, 2] = True, 11
    with pytest.raises(core.TargetOutOfRangeError, match=r"targets\[1, 2\] = 11 is outside \[0, 11\)"):
        torch_losses.masked_cross_entropy(torch.tensor(logits), torch.tensor(targets), torch.tensor(mask))
    targets[1, 2] = -1
    with pytest.raises(core.TargetOutOfRangeError, match=r"targets\[1, 2\] = -1"):
        torch_losses.masked_cross_entropy(torch.tensor(logits), torch.tensor(targets), torch.tensor(mask))


def test_torch_shape_and_dtype_errors():
    logits, targets, mask = map(torch.tensor, _batch())
    with pytest.raises(ValueError, match=r"mask shape \(3, 4\)"):
        torch_losses.masked_cross_entropy(logits, targets, mask[:, :4])
    with pytest.raises(ValueError, match="targets must be integer"):
        torch_losses.masked_cross_entropy(logits, targets.float(), mask)


def test_torch_large_logits_stay_finite_and_accurate():
    logits, targets, mask = _batch(scale=1e4)
    x = torch.tensor(logits, requires_grad=True)
    loss = torch_losses.masked_cross_entropy(x, torch.tensor(targets), torch.tensor(mask))
    loss.backward()
    assert torch.isfinite(x.grad).all()
    assert loss.item() == pytest.approx(_reference(logits, targets, mask.astype(np.float64)), rel=1e-6)


def test_torch_bfloat16_logits_are_computed_in_float32():
    logits, targets, mask = _batch()
    x16 = torch.tensor(logits).bfloat16().requires_grad_()
    loss = torch_losses.masked_cross_entropy(x16, torch.tensor(targets), torch.tensor(mask))
    loss.backward()
    x32 = x16.detach().float().requires_grad_()
    loss32 = torch_losses.masked_cross_entropy(x32, torch.tensor(targets), torch.tensor(mask))
    loss32.backward()
    assert loss.dtype == torch.float32 and x16.grad.dtype == torch.bfloat16
    assert loss.item() == loss32.item()
    # The bfloat16 gradient is the float32 one, rounded once.
    assert torch.equal(x16.grad, x32.grad.bfloat16())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_row_chunks_give_the_unchunked_result(monkeypatch, dtype):
    logits, targets, mask = _batch(shape=(4, 5, 11))

    def loss_and_grad(smoothing):
        x = torch.tensor(logits).to(dtype).requires_grad_()
        loss = torch_losses.masked_cross_entropy(
            x, torch.tensor(targets), torch.tensor(mask), label_smoothing=smoothing
        )
        loss.backward()
        return loss, x.grad

    whole = [loss_and_grad(s) for s in (0.0, 0.1)]
    monkeypatch.setattr(torch_losses, "_CHUNK_BYTES", 3 * 11 * 4)  # 3 rows a chunk, 20 rows: 7 chunks
    assert len(torch_losses._row_chunks(torch.zeros(20, 11))) == 7
    for (loss, grad), smoothing in zip(whole, (0.0, 0.1)):
        chunked_loss, chunked_grad = loss_and_grad(smoothing)
        torch.testing.assert_close(chunked_loss, loss, rtol=1e-6, atol=0.0)
        torch.testing.assert_close(chunked_grad, grad, rtol=0.0, atol=0.0)


def test_torch_saves_no_logits_sized_float_tensor_but_the_logits():
    logits, targets, mask = map(torch.tensor, _batch(shape=(4, 8, 64)))
    logits.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        torch_losses.masked_cross_entropy(logits, targets, mask)
    big = [t for t in saved if t.numel() >= logits.numel()]
    assert len(big) == 1 and big[0].data_ptr() == logits.data_ptr()
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    assert any(t.numel() >= logits.numel() and t.data_ptr() != logits.data_ptr() for t in saved)


# ---- JAX -----------------------------------------------------------------------------------------


def _jax_reference(logits, targets, weights, smoothing=0.0):
    """optax's integer-label CE, sanitized and reduced as PARITY.md prescribes (plain autodiff)."""
    safe = jnp.where(weights != 0, targets, 0)
    vocab = logits.shape[-1]
    smoothed = optax.smooth_labels(jax.nn.one_hot(safe, vocab, dtype=logits.dtype), smoothing)
    loss = optax.softmax_cross_entropy(logits, smoothed)
    return (weights * loss).sum() / weights.sum()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_jax_matches_optax_values_and_gradients(smoothing):
    logits, targets, mask = _batch()
    weights = jnp.asarray(mask * np.random.default_rng(2).uniform(0.5, 2.0, mask.shape), jnp.float32)
    ours, (g_ours, gw_ours) = jax.value_and_grad(
        lambda x, w: jax_losses.masked_cross_entropy(x, targets, w, label_smoothing=smoothing), argnums=(0, 1)
    )(jnp.asarray(logits), weights)
    ref, (g_ref, gw_ref) = jax.value_and_grad(
        lambda x, w: _jax_reference(x, jnp.asarray(targets), w, smoothing), argnums=(0, 1)
    )(jnp.asarray(logits), weights)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-5, atol=1e-7)
    # The reference's derivative at weight-0 positions involves their (sanitized) target; ours is 0.
    np.testing.assert_allclose(np.where(mask, gw_ours, 0), np.where(mask, gw_ref, 0), rtol=1e-5, atol=1e-7)
    assert float(ours) == pytest.approx(
        _reference(logits, targets, np.asarray(weights, np.float64), smoothing), rel=1e-6
    )


def test_jax_all_masked_is_zero_with_zero_gradients_also_under_jit():
    logits, targets, _ = _batch()
    mask = jnp.zeros(targets.shape, bool)
    for fn in (jax_losses.masked_cross_entropy, jax.jit(jax_losses.masked_cross_entropy)):
        loss, grad = jax.value_and_grad(fn)(jnp.asarray(logits), jnp.asarray(targets), mask)
        assert float(loss) == 0.0 and loss.dtype == jnp.float32
        assert not np.asarray(grad).any()


def test_jax_out_of_range_target_raises_eagerly_and_is_nan_under_jit():
    logits, targets, mask = _batch()
    mask[1, 2], targets[1, 2] = True, -1
    with pytest.raises(core.TargetOutOfRangeError, match=r"targets\[1, 2\] = -1"):
        jax_losses.masked_cross_entropy(logits, targets, mask)
    loss, grad = jax.jit(jax.value_and_grad(jax_losses.masked_cross_entropy))(jnp.asarray(logits), targets, mask)
    assert np.isnan(loss)  # documented: never a silently wrapped class
    assert np.isfinite(grad).all()
    targets[1, 2] = 11  # the vocab size: one past the end
    assert np.isnan(jax.jit(jax_losses.masked_cross_entropy)(logits, targets, mask))


def test_jax_eager_check_sees_int64_targets_before_any_int32_conversion():
    logits, targets, mask = _batch()
    mask[2, 1], targets[2, 1] = True, 2**32 + 3  # would wrap to 3, a valid class, as int32
    with pytest.raises(core.TargetOutOfRangeError, match=r"targets\[2, 1\] = 4294967299"):
        jax_losses.masked_cross_entropy(logits, targets.astype(np.int64), mask)


def test_jax_masked_positions_ignore_their_targets_under_jit():
    logits, targets, mask = _batch()
    junk = np.where(mask, targets, np.random.default_rng(3).integers(-1000, 1000, targets.shape))
    jitted = jax.jit(jax.value_and_grad(jax_losses.masked_cross_entropy))
    loss, grad = jitted(jnp.asarray(logits), targets, mask)
    loss_junk, grad_junk = jitted(jnp.asarray(logits), junk, mask)
    assert float(loss) == float(loss_junk)
    np.testing.assert_array_equal(grad, grad_junk)


def test_jax_large_logits_and_bfloat16():
    logits, targets, mask = _batch(scale=1e4)
    loss, grad = jax.value_and_grad(jax_losses.masked_cross_entropy)(jnp.asarray(logits), targets, mask)
    assert np.isfinite(grad).all()
    assert float(loss) == pytest.approx(_reference(logits, targets, mask.astype(np.float64)), rel=1e-6)
    x16 = jnp.asarray(_batch()[0], jnp.bfloat16)
    loss16, grad16 = jax.value_and_grad(jax_losses.masked_cross_entropy)(x16, targets, mask)
    loss32, grad32 = jax.value_and_grad(jax_losses.masked_cross_entropy)(x16.astype(jnp.float32), targets, mask)
    assert loss16.dtype == jnp.float32 and grad16.dtype == jnp.bfloat16
    assert float(loss16) == float(loss32)
    np.testing.assert_array_equal(grad16, grad32.astype(jnp.bfloat16))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_jax_compiled_loss_and_gradient_hold_no_logits_sized_temporary(dtype):
    shape = (8, 64, 512)
    args = (jnp.zeros(shape, dtype), jnp.zeros(shape[:2], jnp.int32), jnp.ones(shape[:2], bool))
    compiled = jax.jit(jax.value_and_grad(jax_losses.masked_cross_entropy)).lower(*args).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    float32_logits = np.prod(shape) * 4
    # float32: no logits-sized buffer beyond the gradient (the output); bfloat16: one float32 one.
    assert temp < (0.5 if dtype == jnp.float32 else 1.5) * float32_logits


# ---- CombinedLoss --------------------------------------------------------------------------------


def _mse(prediction, target):
    return ((prediction - target) ** 2).mean()


@pytest.mark.parametrize("impl", [torch_losses, jax_losses], ids=["torch", "jax"])
def test_combined_loss_weights_and_reports_each_part(impl):
    combined = impl.CombinedLoss({"a": _mse, "b": _mse}, weights={"b": 0.5})
    to = torch.tensor if impl is torch_losses else jnp.asarray
    predictions = {"a": to(np.array([1.0, 2.0], np.float32)), "b": to(np.array([3.0], np.float32)), "extra": None}
    targets = {"a": to(np.array([0.0, 0.0], np.float32)), "b": to(np.array([1.0], np.float32))}
    total, parts = combined(predictions, targets)
    assert list(parts) == ["a", "b"]
    assert float(parts["a"]) == 2.5 and float(parts["b"]) == 4.0
    assert float(total) == 2.5 + 0.5 * 4.0


@pytest.mark.parametrize("impl", [torch_losses, jax_losses], ids=["torch", "jax"])
def test_combined_loss_errors_name_the_loss(impl):
    with pytest.raises(ValueError, match=r"unknown loss name\(s\) \['c'\]"):
        impl.CombinedLoss({"a": _mse}, weights={"c": 1.0})
    with pytest.raises(ValueError, match="weight of loss 'a' must be a finite"):
        impl.CombinedLoss({"a": _mse}, weights={"a": float("inf")})
    with pytest.raises(ValueError, match="at least one loss"):
        impl.CombinedLoss({})
    with pytest.raises(TypeError, match="loss 'a' is not callable: 3"):
        impl.CombinedLoss({"a": 3})
    combined = impl.CombinedLoss({"a": _mse, "b": _mse})
    with pytest.raises(KeyError, match=r"prediction missing for loss\(es\) \['b'\]"):
        combined({"a": np.ones(2)}, {"a": np.ones(2), "b": np.ones(2)})
    with pytest.raises(KeyError, match=r"target missing for loss\(es\) \['a'\]"):
        combined({"a": np.ones(2), "b": np.ones(2)}, {"b": np.ones(2)})


def test_combined_loss_is_a_pure_function_under_jit_and_grad():
    logits, targets, mask = _batch()
    combined = jax_losses.CombinedLoss(
        {"tokens": lambda x, t: jax_losses.masked_cross_entropy(x, *t), "value": _mse}, weights={"value": 2.0}
    )

    @jax.jit
    def total(params, batch):
        value, parts = combined({"tokens": params["logits"], "value": params["v"]}, batch)
        return value, parts

    params = {"logits": jnp.asarray(logits), "v": jnp.ones(3)}
    batch = {"tokens": (jnp.asarray(targets), jnp.asarray(mask)), "value": jnp.zeros(3)}
    (value, parts), grads = jax.value_and_grad(total, has_aux=True)(params, batch)
    expected = jax_losses.masked_cross_entropy(logits, targets, mask) + 2.0 * 1.0
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_allclose(parts["value"], 1.0)
    np.testing.assert_allclose(grads["v"], np.full(3, 2.0 * 2.0 / 3), rtol=1e-6)


class _ScaledMSE(torch.nn.Module):
    """A loss with a parameter and a buffer, as the seed's ``dict[str, nn.Module]`` allows."""

    def __init__(self):
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.zeros(()))
        self.register_buffer("offset", torch.ones(()))

    def forward(self, prediction, target):
        return torch.exp(self.log_scale) * ((prediction - target - self.offset) ** 2).mean()


def test_torch_combined_loss_is_a_module_that_registers_its_losses():
    combined = torch_losses.CombinedLoss({"scaled": _ScaledMSE(), "plain": torch.nn.functional.l1_loss}, {"plain": 0.5})
    assert isinstance(combined, torch.nn.Module) and isinstance(combined.losses, torch.nn.ModuleDict)
    assert [name for name, _ in combined.named_parameters()] == ["losses.scaled.log_scale"]
    assert sorted(combined.state_dict()) == ["losses.scaled.log_scale", "losses.scaled.offset"]
    combined.to(torch.float64)  # moves with .to(), as a device move would
    assert combined.losses["scaled"].log_scale.dtype == torch.float64
    assert combined.losses["scaled"].offset.dtype == torch.float64
    prediction = {"scaled": torch.ones(3, dtype=torch.float64), "plain": torch.ones(2)}
    target = {"scaled": torch.zeros(3, dtype=torch.float64), "plain": torch.zeros(2)}
    total, parts = combined(prediction, target)
    assert parts["scaled"].item() == 0.0 and parts["plain"].item() == 1.0 and total.item() == 0.5
    total.backward()
    assert combined.losses["scaled"].log_scale.grad is not None  # the loss's parameter trains with the model


class _JaxScaledMSE(nnx.Module):
    """The JAX twin of ``_ScaledMSE``'s parameter (NNX has no buffers)."""

    def __init__(self):
        self.log_scale = nnx.Param(jnp.zeros(()))

    def __call__(self, prediction, target):
        return jnp.exp(self.log_scale[...]) * ((prediction - target) ** 2).mean()


def test_jax_combined_loss_is_a_module_whose_loss_parameters_are_its_state():
    combined = jax_losses.CombinedLoss({"scaled": _JaxScaledMSE(), "plain": _mse}, {"plain": 0.5})
    assert isinstance(combined, nnx.Module) and isinstance(combined.losses, nnx.Dict)
    # Saved under the names torch's ModuleDict gives the same parameter.
    assert list(jax_state.to_numpy(combined)) == ["losses.scaled.log_scale"]
    torch_combined = torch_losses.CombinedLoss({"scaled": _ScaledMSE(), "plain": _mse}, {"plain": 0.5})
    assert [name for name, _ in torch_combined.named_parameters()] == ["losses.scaled.log_scale"]
    prediction = {"scaled": jnp.ones(3), "plain": jnp.ones(2)}
    target = {"scaled": jnp.zeros(3), "plain": jnp.zeros(2)}
    grads = nnx.grad(lambda loss: loss(prediction, target)[0])(combined)
    assert float(grads["losses"]["scaled"]["log_scale"][...]) == 1.0  # d/ds exp(s) * 1 at s = 0: trained
    hash(nnx.graphdef(combined))  # hashable: the trainers key their compiled steps on a model's graphdef


def test_jax_combined_loss_keeps_the_order_of_its_losses_through_split_and_merge():
    combined = jax_losses.CombinedLoss({"b": _mse, "a": _JaxScaledMSE()}, {"a": 2.0})
    graphdef, state = nnx.split(combined)
    prediction, target = {"a": jnp.ones(2), "b": jnp.full(2, 3.0)}, {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    total, parts = nnx.merge(graphdef, state)(prediction, target)
    assert list(parts) == ["b", "a"] and nnx.merge(graphdef, state).weights == {"b": 1.0, "a": 2.0}
    assert float(total) == 9.0 + 2.0 * 1.0
    jitted_total, _ = jax.jit(lambda s: nnx.merge(graphdef, s)(prediction, target))(state)
    assert float(jitted_total) == float(total)
