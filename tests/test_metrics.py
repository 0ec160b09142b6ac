"""The molecule models' test metrics and baselines (ml_patterns.molecules.metrics), checked against
values computed by hand."""

import numpy as np
import pytest

from ml_patterns.molecules.config import ModelConfig
from ml_patterns.molecules.metrics import (
    SplitScores,
    binary_roc_auc,
    classification_metrics,
    mae,
    r2,
    regression_metrics,
    roc_auc,
)
from ml_patterns.molecules.predictions import class_probabilities, decode_outputs


def test_mae_and_r2():
    assert mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)  # (1 + 0 + 2) / 3
    assert r2([1, 2, 3], [1, 2, 2]) == pytest.approx(0.5)  # 1 - 1 / 2
    assert r2([2, 2], [1, 3]) is None  # no spread: undefined


def test_binary_roc_auc_counts_ordered_pairs_and_half_ties():
    # Positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered.
    assert binary_roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # Positive 0.4 ties negative 0.4 (half), beats 0.1: (1 + 0.5 + 1 + 1) / 4.
    assert binary_roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.8]) == pytest.approx(0.875)
    assert binary_roc_auc([1, 1], [0.2, 0.3]) is None


def test_multiclass_roc_auc_is_the_macro_one_vs_rest_mean():
    probabilities = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.5, 0.1, 0.4], [0.1, 0.2, 0.7]])
    truth = np.array([0, 1, 2, 2])
    # class 0: positive 0.6 vs 0.2, 0.5, 0.1 -> 1; class 1: 0.5 vs 0.3, 0.1, 0.2 -> 1;
    # class 2: positives 0.4, 0.7 vs 0.1, 0.3 -> 1. One swap: class 0's row scores 0.45 for class 2.
    assert roc_auc(truth, probabilities) == pytest.approx(1.0)
    probabilities[0, 2] = 0.45  # now above the positive 0.4: class 2's AUC 3/4
    assert roc_auc(truth, probabilities) == pytest.approx((1 + 1 + 0.75) / 3)


def test_regression_metrics_with_the_mean_predictor_baseline():
    metrics = regression_metrics("y", np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 2.0]), train_mean=3.0)
    assert metrics == pytest.approx(
        {"MAE y": 1 / 3, "baseline MAE y": 1.0, "R2 y": 0.5, "baseline R2 y": 1 - (4 + 1 + 0) / 2}
    )


def test_classification_metrics_with_the_majority_class_baseline():
    probabilities = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    metrics = classification_metrics("a", np.array([0, 1, 1]), probabilities, train_counts=[1, 5])
    assert metrics == pytest.approx(
        {"accuracy a": 2 / 3, "ROC-AUC a": 1.0, "baseline accuracy a": 2 / 3, "baseline ROC-AUC a": 0.5}
    )
    assert "baseline accuracy a" not in classification_metrics("a", np.array([0, 1, 1]), probabilities, None)


def test_probabilities_and_decoded_outputs():
    np.testing.assert_allclose(class_probabilities(np.array([0.0, np.log(3.0), -800.0]))[:, 1], [0.5, 0.75, 0.0])
    np.testing.assert_allclose(class_probabilities(np.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]])
    config = ModelConfig(tasks=("y", "a"), target_mean=(10.0, 0.0), target_std=(2.0, 1.0), task_classes=(0, 2))
    decoded = decode_outputs({"y": np.array([0.5, -1.0]), "a": np.array([2.0, -2.0])}, config)
    np.testing.assert_allclose(decoded["y"]["value"], [11.0, 8.0])
    assert decoded["a"]["class"].tolist() == [1, 0]


def test_split_scores_leave_out_unlabelled_rows_and_destandardize():
    config = ModelConfig(tasks=("y", "a"), target_mean=(10.0, 0.0), target_std=(2.0, 1.0), task_classes=(0, 2))
    scores = SplitScores(config)
    batch = {
        "labels": {"y": np.array([0.0, 1.0, 123.0], np.float32), "a": np.array([1.0, 0.0, 1.0], np.float32)},
        "label_mask": {"y": np.array([True, True, False]), "a": np.array([True, True, True])},
    }
    scores.add(batch, {"y": np.array([0.5, 1.0, 0.0]), "a": np.array([3.0, -3.0, -1.0])})
    metrics = scores.metrics({"a": [2, 1]})
    assert metrics["MAE y"] == pytest.approx(0.5 * 2 / 2)  # |0.5 - 0| * std over the two labelled rows
    assert metrics["baseline MAE y"] == pytest.approx((0 + 2) / 2)  # truth 10 and 12, predicted 10
    assert metrics["accuracy a"] == pytest.approx(2 / 3) and metrics["baseline accuracy a"] == pytest.approx(1 / 3)
