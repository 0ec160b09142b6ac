"""The molecule models on both backends, torch's weights copied into JAX: forward outputs, every loss
part and every parameter's gradient (of the total and of each head's loss alone), on a random and a
real batch with padding; bfloat16; dropout in eval (exact) and train mode (statistically).

``ml_patterns_app.porting.parity_report.measure`` runs both sides (and torch in float64, the reference that tells
float32 rounding from a real difference: see ``ml_patterns.parity``); the ``ml-patterns parity``
command runs the same function, so the report and this suite check the same thing.

Compilation is what costs on a CPU (several seconds per program), so each architecture is measured
on batches of one shape ([8, 48]): its compiled program serves both batches.
"""

import jax
import numpy as np
import pytest
import torch

import jax_impl.models
import jax_impl.molecules.models
import jax_impl.state
import jax_impl.training
import torch_impl.models
import torch_impl.molecules.models
import torch_impl.state
import torch_impl.training
from jax_impl.collate import collate_molecules
from ml_patterns import parity
from ml_patterns.data import LazyDataset
from ml_patterns.molecules.batches import prepare_batch
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.molecules.masking import FIRST_REGULAR_ID
from ml_patterns.molecules.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from ml_patterns_app.porting.parity_report import build_pair, measure
from parity_tests import tolerances

BATCH, LENGTH = 8, 48
ARCHITECTURES = ("multitask", "autoencoder")


def policy(tolerance) -> parity.Tolerance:
    return parity.Tolerance(rtol=tolerance.rtol, atol=tolerance.atol)


FLOAT32 = {
    "outputs": policy(tolerances.FORWARD),
    "loss": policy(tolerances.LOSS),
    "gradients": policy(tolerances.GRADIENT),
}

# bfloat16 keeps 8 significant bits (eps = 2**-8): every op rounds at ~0.4%, and the two backends
# round at different points, so they agree only to some bfloat16 steps, as each agrees with float64.
# An elementwise relative tolerance is meaningless there; each leaf is measured against a scale:
# - outputs and losses: the leaf's own largest magnitude;
# - gradients: the largest gradient of the whole model. A bfloat16 gradient's rounding error is set
#   by the magnitudes flowing through the backward pass, not by the leaf's own value: attention's
#   key-bias gradients are exactly 0 in exact arithmetic (softmax ignores a shift) and both backends
#   return rounding noise there (~1e-4); query/key gradients are small differences of large terms in
#   softmax's backward, which torch's CPU kernels compute in float32 and round once while XLA rounds
#   the bfloat16 intermediates (JAX's error there is ~10x torch's); embedding and bias gradients
#   sum the rounding errors of every position.
# Measured on these models and batches: <= 2.6% of the scale (about 7 bfloat16 steps), torch and
# JAX each as far from float64. Each leaf is held to max|jax - torch| <= BF16_SCALE * its scale.
BF16_SCALE = 2.0**-4


@pytest.fixture(scope="module")
def manifest(default_dataset):
    return default_dataset[1]


def config_for(manifest, architecture: str, **overrides) -> ModelConfig:
    sizes = dict(d_model=32, n_heads=4, n_layers=2, n_decoder_layers=2, d_ff=64, max_len=64)
    return ModelConfig.from_manifest(manifest, architecture=architecture, **{**sizes, **overrides})


def random_batch(config: ModelConfig, seed: int) -> dict:
    """Random tokens (UNK included) and lengths from 3 to LENGTH, so most rows are padded."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, LENGTH + 1, size=BATCH)
    lengths[0] = LENGTH
    ids = np.full((BATCH, LENGTH), PAD_ID, dtype=np.int32)
    for i, n in enumerate(lengths):
        body = rng.integers(FIRST_REGULAR_ID, config.vocab_size, size=n - 2)
        body[rng.random(n - 2) < 0.05] = UNK_ID
        ids[i, :n] = [BOS_ID, *body, EOS_ID]
    labels = {t: rng.normal(m, s, size=BATCH) for t, m, s in zip(config.tasks, config.target_mean, config.target_std)}
    return prepare_batch({"input_ids": ids, "attention_mask": ids != PAD_ID, "labels": labels}, config, rng)


def real_batch(root, config: ModelConfig, seed: int) -> dict:
    """The first BATCH validation molecules that fit LENGTH, padded to it by the JAX collate."""
    dataset = LazyDataset(root, split="val")
    records = [r for r in (dataset[i] for i in range(60)) if len(r["input_ids"]) <= LENGTH][:BATCH]
    dataset.close()
    collated = collate_molecules(records, buckets=(LENGTH,))
    return prepare_batch(collated, config, np.random.default_rng(seed))


@pytest.fixture(scope="module", params=ARCHITECTURES)
def pair(request, manifest):
    config = config_for(manifest, request.param)
    return config, *build_pair(config)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_both_backends_name_and_shape_the_weights_alike(manifest, architecture):
    config = config_for(manifest, architecture)
    torch_arrays = torch_impl.state.to_numpy(torch_impl.molecules.models.build_model(config))
    jax_arrays = jax_impl.state.to_numpy(jax_impl.molecules.models.build_model(config))
    assert sorted(torch_arrays) == sorted(jax_arrays)
    assert {k: v.shape for k, v in torch_arrays.items()} == {k: v.shape for k, v in jax_arrays.items()}


def test_torch_to_jax_to_torch_is_bit_exact(pair):
    config, torch_model, jax_model = pair
    original = torch_impl.state.to_numpy(torch_model)
    back = torch_impl.molecules.models.build_model(ModelConfig(**{**config.__dict__, "seed": 99}))
    torch_impl.state.from_numpy(back, jax_impl.state.to_numpy(jax_model))
    result = torch_impl.state.to_numpy(back)
    for name, array in original.items():
        assert result[name].tobytes() == array.tobytes(), name


@pytest.mark.parametrize("source", ["random", "real"])
def test_float32_outputs_losses_and_gradients(pair, default_dataset, source):
    config, torch_model, jax_model = pair
    batch = random_batch(config, seed=1) if source == "random" else real_batch(default_dataset[0], config, seed=2)
    assert (~batch["attention_mask"]).any(axis=1).sum() >= BATCH // 2  # padding on most rows
    measured = measure(torch_model, jax_model, batch, per_part=True)
    report = parity.compare(measured.torch, measured.jax, FLOAT32, reference=measured.float64, names=("torch", "jax"))
    report.raise_if_failed()

    # Not vacuous: every part (each head alone, and the total) has a gradient for every
    # parameter, and the total reaches every parameter.
    parts = ["total", *config.tasks, "mlm"] if config.architecture == "multitask" else ["total", "reconstruction"]
    assert sorted(measured.jax["loss"]) == sorted(parts) and sorted(measured.jax["gradients"]) == sorted(parts)
    names = list(torch_impl.state.to_numpy(torch_model))
    assert all(list(grads) == names for grads in measured.torch["gradients"].values())
    assert all(np.abs(g).max() > 0 for g in measured.torch["gradients"]["total"].values())
    if config.architecture == "multitask":
        # One head's loss reaches its own head and the backbone, never another head.
        tps = measured.jax["gradients"]["TPSA"]
        assert np.abs(tps["heads.TPSA.out.weight"]).max() > 0 and not np.abs(tps["heads.MolWt.out.weight"]).any()


@pytest.mark.parametrize("pair", ["multitask"], indirect=True)
def test_each_head_alone_forward(pair, default_dataset):
    """``forward(batch, task=...)`` on torch matches JAX's output for that head (JAX's own
    ``task=`` path equals its full forward exactly: tests/test_models.py)."""
    config, torch_model, jax_model = pair
    batch = real_batch(default_dataset[0], config, seed=2)
    full = measure(torch_model, jax_model, batch, per_part=True, reference=False).jax["outputs"]
    for task in (*config.tasks, "mlm"):
        with torch.no_grad():
            ((name, out),) = torch_model(torch_impl.training.to_device(batch), task=task).items()
        assert name == task
        report = parity.compare({task: out.numpy()}, {task: full[task]}, FLOAT32["outputs"])
        report.raise_if_failed()


@pytest.mark.standard_promotion(
    "Flax's LayerNorm computes bfloat16 statistics in float32 via jnp.promote_types(bfloat16, float32), "
    "which strict promotion refuses"
)
def test_bfloat16(pair, default_dataset):
    config, torch_model, jax_model = pair
    batch = real_batch(default_dataset[0], config, seed=2)
    measured = measure(torch_model, jax_model, batch, dtype="bfloat16")
    torch_leaves, jax_leaves = parity.flatten(measured.torch), parity.flatten(measured.jax)
    reference = parity.flatten(measured.float64)
    gradient_scale = max(float(np.abs(g).max()) for g in measured.float64["gradients"].values())
    failures = []
    for path, truth in reference.items():
        scale = gradient_scale if path.startswith("gradients/") else float(np.abs(truth).max())
        row = parity.compare_arrays(
            path, torch_leaves[path], jax_leaves[path], parity.Tolerance(0.0, BF16_SCALE * scale)
        )
        if not row.passed:
            failures.append(f"{path}: max diff {row.max_abs_diff:.3e} > {BF16_SCALE:g} x {scale:.3e}")
    assert not failures, "\n".join(failures)
    # The comparison is at bfloat16 resolution because the computation really was bfloat16.
    assert all(out.dtype == jax.numpy.bfloat16 for out in measured.jax["outputs"].values())
    assert any(
        row.max_abs_diff > 1e-4 for row in parity.compare(measured.torch, measured.jax, parity.Tolerance(0, 0)).rows
    )


def test_eval_mode_turns_dropout_off_exactly(manifest, default_dataset):
    """With dropout 0.3 in eval mode, each backend's outputs are bit-identical to the same weights
    with dropout 0: eval mode is the identity, not an approximation of it."""
    config = config_for(manifest, "autoencoder", dropout=0.3, attention_dropout=0.3)
    without = ModelConfig(**{**config.__dict__, "dropout": 0.0, "attention_dropout": 0.0})
    batch = real_batch(default_dataset[0], config, seed=2)
    torch_model, jax_model = build_pair(config)
    weights = torch_impl.state.to_numpy(torch_model)
    torch_plain = torch_impl.molecules.models.build_model(without, weights=weights).eval()
    jax_plain = jax_impl.molecules.models.build_model(without, weights=weights)
    jax_plain.eval()
    with torch.no_grad():
        a, b = torch_model(torch_impl.training.to_device(batch)), torch_plain(torch_impl.training.to_device(batch))
    assert all(torch.equal(a[k], b[k]) for k in a)
    c, d = jax_model(jax_impl.training.to_device(batch)), jax_plain(jax_impl.training.to_device(batch))
    assert all(np.array_equal(np.asarray(c[k]), np.asarray(d[k])) for k in c)


def test_train_mode_dropout_statistics(manifest, default_dataset):
    """Dropout masks come from different RNGs and cannot match, so compare distributions. The
    statistic of one draw is the mean squared deviation of the training-mode outputs from the
    eval-mode ones (over the real tokens' MLM logits, and over the regression outputs): thousands of
    elements, so its mean over 100 draws is precise. Same weights and input and the same dropout
    semantics give the same expectation on both backends; the means must agree within 4 standard
    errors. (This catches real differences: JAX without attention dropout gives z = 8, a dropout rate
    of 0.18 instead of 0.2 gives z = 14; the training loss itself, dominated by the labels'
    spread, would miss both.)"""
    config = config_for(manifest, "multitask", dropout=0.2, attention_dropout=0.2)
    batch = real_batch(default_dataset[0], config, seed=2)
    torch_model, jax_model = build_pair(config)
    real, tasks, draws = batch["attention_mask"], list(config.tasks), 100
    torch_batch = torch_impl.training.to_device(batch)
    with torch.no_grad():
        reference = torch_impl.state.tree_to_numpy(torch_model(torch_batch))

    def deviations(outputs: dict) -> tuple[float, float]:
        mlm = float(((outputs["mlm"] - reference["mlm"])[real] ** 2).mean())
        regression = float(np.mean([(outputs[t] - reference[t]) ** 2 for t in tasks]))
        return mlm, regression

    torch_model.train()
    torch_stats = []
    with torch.no_grad():
        for i in range(draws):
            torch.manual_seed(1000 + i)
            torch_stats.append(deviations(torch_impl.state.tree_to_numpy(torch_model(torch_batch))))

    fn, params, rest = jax_impl.models.functional(jax_model)
    apply = jax.jit(lambda p, r, b, key: fn.apply(p, r, b, key=key, train=True))
    jax_batch = jax_impl.training.to_device(batch)
    keys = jax.random.split(jax.random.key(7), draws)
    jax_stats = [deviations(jax_impl.state.tree_to_numpy(apply(params, rest, jax_batch, key))) for key in keys]

    for column, what in enumerate(("MLM logits", "regression outputs")):
        t, j = np.array(torch_stats)[:, column], np.array(jax_stats)[:, column]
        assert t.min() > 0 and j.min() > 0  # dropout is on in training mode
        standard_error = np.sqrt(t.var(ddof=1) / draws + j.var(ddof=1) / draws)
        z = (t.mean() - j.mean()) / standard_error
        assert abs(z) < 4, f"{what}: torch {t.mean():.4f}, jax {j.mean():.4f}, z = {z:.1f}"
