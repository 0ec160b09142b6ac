"""A molecule model's head outputs in the targets' own terms (numpy only, for either backend's
outputs): a regression target's value in its units, a classification target's class and
probabilities. ``compare``'s test metrics and ``ml-patterns predict`` read them from here."""

from __future__ import annotations

import numpy as np

from ml_patterns.molecules.batches import destandardize
from ml_patterns.molecules.config import ModelConfig


def class_probabilities(logits: np.ndarray) -> np.ndarray:
    """``float64 [B, C]`` probabilities: a binary head's one logit ``[B]`` through the sigmoid (``[B, 2]``:
    P(0), P(1)), a multiclass head's logits ``[B, C]`` through the softmax."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 1:
        # exp(-logaddexp(0, -z)) is the sigmoid without overflow for a large |z|.
        positive = np.exp(-np.logaddexp(0.0, -logits))
        return np.stack([1.0 - positive, positive], axis=1)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def decode_outputs(outputs: dict, config: ModelConfig) -> dict[str, dict[str, np.ndarray]]:
    """``{task: {"value": float64 [B]}}`` for a regression task (destandardized:
    ``prediction * std + mean``), ``{task: {"class": int64 [B], "probabilities": float64 [B, C]}}``
    for a classification task (the most probable class; ties go to the lower class id)."""
    values = destandardize(outputs, config)
    decoded = {}
    for task in config.tasks:
        if config.classes(task):
            probabilities = class_probabilities(outputs[task])
            decoded[task] = {"class": probabilities.argmax(axis=1), "probabilities": probabilities}
        else:
            decoded[task] = {"value": values[task]}
    return decoded
