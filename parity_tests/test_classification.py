"""The classification heads on both backends, torch's weights copied into JAX: a binary target (one
logit, binary cross-entropy) and a 3-class one (3 logits, cross-entropy) beside a regression target,
with missing labels: forward outputs, every loss part and the gradients of each, within the policy's
float32 tolerances (and torch in float64 as the reference); each loss against its own formula."""

import numpy as np
import pytest

from ml_patterns import parity
from ml_patterns.collate import collate_arrays
from ml_patterns.molecules.batches import prepare_batch
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.molecules.masking import FIRST_REGULAR_ID
from ml_patterns.molecules.tokenizer import BOS_ID, EOS_ID
from ml_patterns_app.porting.parity_report import build_pair, measure
from parity_tests.test_models import FLOAT32

BATCH, LENGTH = 8, 24
CONFIG = ModelConfig(
    vocab_size=40,
    tasks=("active", "kind", "y"),
    target_mean=(0.0, 0.0, 1.0),
    target_std=(1.0, 1.0, 2.0),
    task_classes=(2, 3, 0),
    d_model=32,
    n_heads=4,
    n_layers=2,
    d_ff=64,
    max_len=64,
)


def labelled_batch(seed: int = 0) -> dict:
    """Records as a prepared dataset holds them (``None``: missing), collated, then prepared."""
    rng = np.random.default_rng(seed)
    records = []
    for i, n in enumerate(rng.integers(4, LENGTH + 1, size=BATCH)):
        ids = [BOS_ID, *rng.integers(FIRST_REGULAR_ID, CONFIG.vocab_size, size=n - 2).tolist(), EOS_ID]
        label = {"active": float(i % 2), "kind": float(i % 3), "y": float(rng.normal())}
        if i in (2, 5):
            label["active"] = None
        if i == 6:
            label["kind"] = None
        records.append({"input_ids": ids, "label": label})
    collated = collate_arrays(records, 0, integer_dtype=np.int32, buckets=(LENGTH,))
    return prepare_batch(collated, CONFIG, rng)


@pytest.fixture(scope="module")
def measured():
    torch_model, jax_model = build_pair(CONFIG)
    return measure(torch_model, jax_model, labelled_batch(), per_part=True)


def test_the_batch_holds_class_labels_as_each_loss_reads_them():
    batch = labelled_batch()
    assert batch["labels"]["active"].dtype == np.float32 and batch["labels"]["kind"].dtype == np.int32
    assert batch["label_mask"]["active"].tolist() == [True, True, False, True, True, False, True, True]
    assert batch["labels"]["kind"][6] == 0 and not batch["label_mask"]["kind"][6]


def test_outputs_losses_and_gradients_agree(measured):
    assert measured.torch["outputs"]["active"].shape == (BATCH,)
    assert measured.torch["outputs"]["kind"].shape == (BATCH, 3)
    report = parity.compare(measured.torch, measured.jax, FLOAT32, reference=measured.float64, names=("torch", "jax"))
    report.raise_if_failed()


def test_each_loss_is_its_formula_over_the_labelled_rows(measured):
    batch = labelled_batch()
    for result in (measured.torch, measured.jax):
        present = batch["label_mask"]["active"]
        z, y = result["outputs"]["active"][present].astype(np.float64), batch["labels"]["active"][present]
        bce = np.mean(np.logaddexp(0, z) - y * z)
        assert float(result["loss"]["active"]) == pytest.approx(bce, rel=1e-5)
        present = batch["label_mask"]["kind"]
        logits = result["outputs"]["kind"][present].astype(np.float64)
        targets = batch["labels"]["kind"][present]
        log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        assert float(result["loss"]["kind"]) == pytest.approx(-log_p[np.arange(len(targets)), targets].mean(), rel=1e-5)


def test_each_classification_loss_reaches_its_own_head_only(measured):
    for result in (measured.torch, measured.jax):
        gradients = result["gradients"]["active"]
        assert np.abs(gradients["heads.active.out.weight"]).max() > 0
        assert not np.abs(gradients["heads.kind.out.weight"]).any()
