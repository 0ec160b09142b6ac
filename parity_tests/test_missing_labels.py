"""Missing labels (NaN in a collated batch): the regression losses average over the rows whose label
is present, on both backends alike (values and gradients), and a task with no label in the batch
contributes 0 and no gradient; a prepared set with holes trains to the same history on both."""

import numpy as np
import pytest

from ml_patterns import parity
from ml_patterns.data import LazyDataset, Subset
from ml_patterns.molecules.batches import prepare_batch
from ml_patterns.molecules.config import ModelConfig, PrepareConfig
from ml_patterns.molecules.masking import FIRST_REGULAR_ID
from ml_patterns.molecules.prepare import prepare_dataset
from ml_patterns.molecules.tokenizer import BOS_ID, EOS_ID, PAD_ID
from ml_patterns.optim import OptimizerConfig
from ml_patterns_app.porting.parity_report import build_pair, measure
from parity_tests.sparse_data import write_sparse_source
from parity_tests.test_models import FLOAT32
from parity_tests.test_training import TRAIN_MOLECULES, run_both, small_config
from parity_tests.tolerances import HISTORY

BATCH, LENGTH = 8, 24
CONFIG = ModelConfig(
    vocab_size=40,
    tasks=("some", "none", "all"),
    target_mean=(1.0, -2.0, 0.5),
    target_std=(2.0, 0.5, 1.0),
    d_model=32,
    n_heads=4,
    n_layers=2,
    d_ff=64,
    max_len=64,
)


def sparse_batch(seed: int = 0) -> dict:
    """Task "some" misses 3 of 8 labels, "none" misses all of them, "all" none."""
    rng = np.random.default_rng(seed)
    ids = np.full((BATCH, LENGTH), PAD_ID, dtype=np.int32)
    for i, n in enumerate(rng.integers(4, LENGTH + 1, size=BATCH)):
        ids[i, :n] = [BOS_ID, *rng.integers(FIRST_REGULAR_ID, CONFIG.vocab_size, size=n - 2), EOS_ID]
    labels = {task: rng.normal(size=BATCH) for task in CONFIG.tasks}
    labels["some"][[1, 4, 6]] = np.nan
    labels["none"][:] = np.nan
    return prepare_batch({"input_ids": ids, "attention_mask": ids != PAD_ID, "labels": labels}, CONFIG, rng)


def test_the_batch_masks_missing_labels_and_holds_no_nan():
    batch = sparse_batch()
    assert batch["label_mask"]["some"].tolist() == [True, False, True, True, False, True, False, True]
    assert not batch["label_mask"]["none"].any() and batch["label_mask"]["all"].all()
    assert all(np.isfinite(values).all() for values in batch["labels"].values())


@pytest.fixture(scope="module")
def measured():
    torch_model, jax_model = build_pair(CONFIG)
    return measure(torch_model, jax_model, sparse_batch(), per_part=True)


def test_masked_regression_losses_and_gradients_agree(measured):
    report = parity.compare(measured.torch, measured.jax, FLOAT32, reference=measured.float64, names=("torch", "jax"))
    report.raise_if_failed()


def test_the_masked_loss_is_the_mse_over_present_rows(measured):
    batch = sparse_batch()
    for result in (measured.torch, measured.jax):
        present = batch["label_mask"]["some"]
        errors = result["outputs"]["some"][present] - batch["labels"]["some"][present]
        assert float(result["loss"]["some"]) == pytest.approx(float(np.mean(errors**2)), rel=1e-5)
        assert float(result["loss"]["none"]) == 0.0


def test_a_task_without_labels_sends_no_gradient_and_others_do(measured):
    names = list(measured.torch["gradients"]["none"])
    for result in (measured.torch, measured.jax):
        assert all(not np.abs(result["gradients"]["none"][name]).any() for name in names)
        assert np.abs(result["gradients"]["some"]["heads.some.out.weight"]).max() > 0
    assert "heads.none.out.weight" in names  # the check above covered the task's own head


@pytest.fixture(scope="module")
def sparse_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparse")
    write_sparse_source(root / "sparse.csv", 420)
    config = PrepareConfig(rdkit_properties=(), val_fraction=0.25, test_fraction=0.25)  # 105 each: no warning
    manifest = prepare_dataset(
        root / "ds",
        csv_path=root / "sparse.csv",
        target_cols=["tpsa", "coarse", "active"],
        config=config,
        progress=False,
    )
    return root / "ds", manifest


@pytest.mark.slow
@pytest.mark.standard_promotion("optax's Adam mixes the int32 step count with Python floats")
def test_training_on_a_set_with_holes_and_a_class_agrees_on_both_backends(sparse_dataset):
    root, manifest = sparse_dataset
    assert 0 < manifest["targets"]["tpsa"]["labelled"]["train"] < manifest["splits"]["train"]
    assert manifest["targets"]["active"]["task"] == "classification"
    train = Subset(LazyDataset(root, split="train"), range(TRAIN_MOLECULES))
    val = LazyDataset(root, split="val")
    config = small_config(manifest, "multitask")
    histories, _, _ = run_both(config, OptimizerConfig("adam", learning_rate=1e-3), train, val)
    torch_history, jax_history = histories["torch"], histories["jax"]
    assert (
        all(np.isfinite(torch_history["train_loss"]))
        and torch_history["train_loss"][-1] < torch_history["train_loss"][0]
    )
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(
            jax_history[key], torch_history[key], rtol=HISTORY.rtol, atol=HISTORY.atol, err_msg=key
        )
