"""Test-split metrics of the molecule models, with the baselines a model has to beat (numpy only).

Regression: ``MAE <task>`` (in the target's units) and ``R2 <task>`` (``1 - SS_res / SS_tot``, over
the test labels' own mean). Classification: ``accuracy <task>`` and ``ROC-AUC <task>`` (binary: the
probability of class 1 ranked against the labels, ties counted half, the Mann-Whitney form;
multiclass: the mean of each class's one-vs-rest AUC, "macro", over the classes the test split has
with both positive and negative rows). Each metric is over the test rows labelled for its task.

Baselines (``baseline <metric>``), computed on the test split from the training split's statistics:
regression, the mean predictor (every molecule predicted as the training mean); classification,
the majority class (every molecule predicted as the training split's most frequent class, which as
a constant score has ROC-AUC 0.5). A metric that is undefined on the test split (R2 of labels that
are all equal, ROC-AUC with one class) is left out rather than reported as NaN.
"""

from __future__ import annotations

import numpy as np

from ml_patterns.molecules.batches import destandardize
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.molecules.predictions import class_probabilities

BASELINE = "baseline "


def mae(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(predicted, np.float64) - np.asarray(truth, np.float64))))


def r2(truth: np.ndarray, predicted: np.ndarray) -> float | None:
    """Coefficient of determination; ``None`` when the labels have no spread (it is undefined)."""
    truth, predicted = np.asarray(truth, np.float64), np.asarray(predicted, np.float64)
    total = np.sum((truth - truth.mean()) ** 2)
    return None if total == 0 else float(1.0 - np.sum((truth - predicted) ** 2) / total)


def accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(np.asarray(truth) == np.asarray(predicted)))


def binary_roc_auc(truth: np.ndarray, scores: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative) + half P(tie): the area under the ROC curve.
    ``truth`` 0/1 ``[N]``; ``None`` when one of the two classes is absent."""
    truth, scores = np.asarray(truth).astype(bool), np.asarray(scores, np.float64)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    if not positives or not negatives:
        return None
    ranks = _average_ranks(scores)
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def roc_auc(truth: np.ndarray, probabilities: np.ndarray) -> float | None:
    """``probabilities`` ``[N, C]``: binary (C = 2) AUC of column 1, else the macro one-vs-rest mean
    over the classes with both positive and negative rows; ``None`` if there is none."""
    truth, probabilities = np.asarray(truth), np.asarray(probabilities, np.float64)
    if probabilities.shape[1] == 2:
        return binary_roc_auc(truth == 1, probabilities[:, 1])
    areas = [binary_roc_auc(truth == c, probabilities[:, c]) for c in range(probabilities.shape[1])]
    areas = [area for area in areas if area is not None]
    return float(np.mean(areas)) if areas else None


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), np.float64)
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2
    return ranks


def regression_metrics(task: str, truth: np.ndarray, predicted: np.ndarray, train_mean: float) -> dict[str, float]:
    """MAE and R2 of ``predicted`` (target units) and of the mean predictor ``train_mean``."""
    constant = np.full(len(truth), train_mean)
    metrics = {}
    for name, fn in (("MAE", mae), ("R2", r2)):
        value, baseline = fn(truth, predicted), fn(truth, constant)
        if value is not None:
            metrics[f"{name} {task}"], metrics[f"{BASELINE}{name} {task}"] = value, baseline
    return metrics


def classification_metrics(
    task: str, truth: np.ndarray, probabilities: np.ndarray, train_counts: list[int] | None
) -> dict[str, float]:
    """Accuracy and ROC-AUC of ``probabilities`` (``[N, C]``) against class ids ``truth``, and of the
    majority class of ``train_counts`` (each class's training rows; no baseline without them)."""
    metrics = {f"accuracy {task}": accuracy(truth, probabilities.argmax(axis=1))}
    area = roc_auc(truth, probabilities)
    if area is not None:
        metrics[f"ROC-AUC {task}"] = area
    if train_counts:
        majority = int(np.argmax(train_counts))
        metrics[f"{BASELINE}accuracy {task}"] = accuracy(truth, np.full(len(truth), majority))
        if area is not None:
            constant = np.full(probabilities.shape, 1.0 / probabilities.shape[1])
            metrics[f"{BASELINE}ROC-AUC {task}"] = roc_auc(truth, constant)
    return metrics


def train_class_counts(manifest: dict) -> dict[str, list[int]]:
    """Each classification target's training rows per class, from a prepared dataset's manifest."""
    targets = manifest.get("targets", {})
    return {task: stats["class_counts_train"] for task, stats in targets.items() if "class_counts_train" in stats}


class SplitScores:
    """Collects a multitask model's outputs over the test batches, then scores every task.

    ``add(batch, outputs)`` takes a prepared batch (``ml_patterns.molecules.batches``: labels
    standardized, ``label_mask``) and the model's outputs as numpy; ``metrics(train_counts)`` returns
    ``{name: value}`` (the module docstring), ``train_counts`` being each classification task's
    training rows per class (the manifest's ``targets.NAME.class_counts_train``).
    """

    def __init__(self, config: ModelConfig):
        self.config = config
        self._truth: dict[str, list] = {task: [] for task in config.tasks}
        self._outputs: dict[str, list] = {task: [] for task in config.tasks}

    def add(self, batch: dict, outputs: dict) -> None:
        for task in self.config.tasks:
            present = np.asarray(batch["label_mask"][task], dtype=bool)
            self._truth[task].append(np.asarray(batch["labels"][task])[present])
            self._outputs[task].append(np.asarray(outputs[task])[present])

    def metrics(self, train_counts: dict[str, list[int]] | None = None) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for task, mean in zip(self.config.tasks, self.config.target_mean):
            if not self._truth[task] or not sum(len(t) for t in self._truth[task]):
                continue  # no labelled test row for this task
            truth, outputs = np.concatenate(self._truth[task]), np.concatenate(self._outputs[task])
            if self.config.classes(task):
                probabilities = class_probabilities(outputs)
                counts = (train_counts or {}).get(task)
                metrics.update(classification_metrics(task, truth.astype(np.int64), probabilities, counts))
            else:
                # Standardized on both sides: back to the target's units, in float64.
                truth, predicted = (destandardize({task: x}, self.config)[task] for x in (truth, outputs))
                metrics.update(regression_metrics(task, truth, predicted, mean))
        return metrics
