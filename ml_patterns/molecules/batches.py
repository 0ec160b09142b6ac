"""The batch contract of the molecule models, built once in numpy from a collated batch.

Both backends' ``compute_loss`` read the dicts built here, so torch and JAX train on the same
arrays: the same standardized labels, the same masked tokens. ``BatchPreparer`` is the trainers'
batch transform for these models (``Trainer(..., batch_transform=BatchPreparer(config))``).

A collated batch (``collate.collate_molecules``) is
``{"input_ids": int [B, L], "attention_mask": bool [B, L], "labels": float32 [B] | {task: float32 [B]},
"label_mask": bool, shaped as labels}`` (NaN and False where a label is missing) with sequences
``BOS ... EOS`` right-padded with PAD.

Multi-task batch (``prepare_multitask_batch``)::

    input_ids        int32 [B, L]    clean tokens: the regression heads and forward() read these
    attention_mask   bool  [B, L]    True on real tokens
    labels           {task: float32 [B]}  standardized: (y - mean) / std, with the config's stats; 0 where missing;
                                          a classification task's: its class as float32 0./1. (binary) or
                                          int32 [B] class ids (multiclass), not standardized
    label_mask       {task: bool [B]}     False where the label is missing (NaN): the regression losses
                                          average over the rows where it is True
    mlm_input_ids    int32 [B, L]    corrupted tokens: the masked-token head's loss reads these
    mlm_targets      int32 [B, L]    original ids where mlm_mask, PAD elsewhere
    mlm_mask         bool  [B, L]    the positions the masked-token loss scores

(the three ``mlm_*`` keys only when the config has a masked-token head).

Autoencoder batch (``prepare_autoencoder_batch``), teacher forcing by a shift of one::

    input_ids               int32 [B, L]      encoder input
    attention_mask          bool  [B, L]
    decoder_input_ids       int32 [B, L - 1]  input_ids[:, :-1]  (BOS t1 ... : what the decoder reads)
    decoder_attention_mask  bool  [B, L - 1]  attention_mask[:, :-1]
    decoder_targets         int32 [B, L - 1]  input_ids[:, 1:]   (t1 ... EOS: what it predicts)
    decoder_mask            bool  [B, L - 1]  attention_mask[:, 1:]  (positions scored)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ml_patterns.loader import batch_rng
from ml_patterns.molecules.config import ModelConfig
from ml_patterns.molecules.masking import mask_tokens

MULTITASK_KEYS = ("input_ids", "attention_mask", "labels", "label_mask")
MLM_KEYS = ("mlm_input_ids", "mlm_targets", "mlm_mask")
AUTOENCODER_KEYS = (
    "input_ids",
    "attention_mask",
    "decoder_input_ids",
    "decoder_attention_mask",
    "decoder_targets",
    "decoder_mask",
)

TRAIN_STREAM, EVAL_STREAM = 0, 1


class BatchPreparer:
    """The molecule models' batch transform (``ml_patterns.training.BatchTransform``): a collated
    batch to the model's batch (``prepare_batch``), identically on both backends. The randomness of
    batch i of epoch e (token masking) is ``batch_rng`` of its position, so a resumed run and the
    other backend draw the same masks.

    Evaluation batches use their own stream and no epoch, so a validation loss is comparable across
    epochs.
    """

    def __init__(self, config: ModelConfig):
        self.config = config

    def __call__(self, collated: Mapping, epoch: int, batch_index: int, *, train: bool) -> dict:
        stream = TRAIN_STREAM if train else EVAL_STREAM
        rng = batch_rng(self.config.seed, epoch if train else 0, batch_index, stream=stream)
        return prepare_batch(_as_numpy(collated), self.config, rng)


def _as_numpy(tree: Mapping) -> dict:
    # np.asarray reads a CPU torch tensor without copying and leaves numpy arrays as they are.
    return {k: _as_numpy(v) if isinstance(v, Mapping) else np.asarray(v) for k, v in tree.items()}


def prepare_batch(collated: dict, config: ModelConfig, rng: np.random.Generator | None = None) -> dict:
    """The batch ``config.architecture``'s model trains on (see the module docstring)."""
    if config.architecture == "autoencoder":
        return prepare_autoencoder_batch(collated, config)
    return prepare_multitask_batch(collated, config, rng)


def prepare_multitask_batch(collated: dict, config: ModelConfig, rng: np.random.Generator | None) -> dict:
    """Standardized labels for every task, plus masked tokens drawn from ``rng`` if the config has
    a masked-token head (``rng`` is then required: pass a fixed-seed generator for evaluation)."""
    input_ids, attention_mask = _tokens(collated, config)
    labels = standardize_labels(collated.get("labels"), config, batch_size=input_ids.shape[0])
    present = {task: ~np.isnan(values) for task, values in labels.items()}
    given = collated.get("label_mask")  # collate's: False where a record's label is None (missing)
    if given is not None:
        given = given if isinstance(given, Mapping) else {config.tasks[0]: given}
        present = {task: mask & np.asarray(given[task], dtype=bool) for task, mask in present.items()}
    # A missing label becomes 0 with its mask False: a NaN would reach the loss's gradient even when
    # multiplied by 0 (NaN * 0 is NaN), and class 0 is a valid id for the cross-entropy's gather.
    filled = {task: np.where(present[task], values, np.float32(0)) for task, values in labels.items()}
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": {task: _class_ids(values, config.classes(task), task) for task, values in filled.items()},
        "label_mask": present,
    }
    if config.has_mlm_head:
        if rng is None:
            raise ValueError("a model with a masked-token head needs rng to draw the masks")
        masked = mask_tokens(
            input_ids, attention_mask, rng, vocab_size=config.vocab_size, mask_prob=config.mlm_mask_prob
        )
        batch.update(mlm_input_ids=masked.input_ids, mlm_targets=masked.targets, mlm_mask=masked.mask)
    return batch


def _class_ids(values: np.ndarray, classes: int, task: str) -> np.ndarray:
    """A task's labels as its loss reads them: float32 for regression and binary classification
    (0./1.), int32 class ids for multiclass; a class id outside ``0..classes-1`` is refused."""
    if classes and values.size and (values.min() < 0 or values.max() >= classes or np.any(values != np.round(values))):
        raise ValueError(f"labels[{task!r}] hold {sorted(set(values.tolist()))[:5]}, not class ids 0..{classes - 1}")
    return values.astype(np.int32) if classes > 2 else values


def prepare_autoencoder_batch(collated: dict, config: ModelConfig) -> dict:
    input_ids, attention_mask = _tokens(collated, config)
    if input_ids.shape[1] < 2:
        raise ValueError(f"an autoencoder batch needs length >= 2 (BOS and EOS), got input_ids {input_ids.shape}")
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": input_ids[:, :-1],
        "decoder_attention_mask": attention_mask[:, :-1],
        "decoder_targets": input_ids[:, 1:],
        "decoder_mask": attention_mask[:, 1:],
    }


def standardize_labels(labels, config: ModelConfig, *, batch_size: int) -> dict[str, np.ndarray]:
    """``{task: float32 [B]}``, each ``(y - mean) / std`` computed in float64 and rounded once.

    ``labels`` is the collated ``float [B]`` (a one-target dataset) or ``{task: float [B]}``; every
    task of the config must be present (extra ones are ignored). A missing label (NaN) stays NaN.
    """
    if labels is None:
        raise KeyError("the collated batch has no 'labels'")
    if not isinstance(labels, dict):
        if len(config.tasks) != 1:
            raise ValueError(f"labels is one array but the config has {len(config.tasks)} tasks {list(config.tasks)}")
        labels = {config.tasks[0]: labels}
    missing = [task for task in config.tasks if task not in labels]
    if missing:
        raise KeyError(f"labels lack task(s) {missing}; present: {sorted(labels)}")
    out = {}
    for task, mean, std in zip(config.tasks, config.target_mean, config.target_std):
        values = np.asarray(labels[task], dtype=np.float64)
        if values.shape != (batch_size,):
            raise ValueError(f"labels[{task!r}] has shape {values.shape}, expected ({batch_size},)")
        out[task] = ((values - mean) / std).astype(np.float32)
    return out


def destandardize(predictions: dict, config: ModelConfig) -> dict[str, np.ndarray]:
    """Regression outputs back in the targets' units: ``y = prediction * std + mean`` (float64);
    classification tasks (not standardized) are left out."""
    return {
        task: np.asarray(predictions[task], dtype=np.float64) * std + mean
        for task, mean, std in zip(config.tasks, config.target_mean, config.target_std)
        if task in predictions and not config.classes(task)
    }


def check_length(length: int, max_len: int) -> None:
    """Refuses a batch longer than the position table (``ModelConfig.max_len``) instead of clipping."""
    if length > max_len:
        raise ValueError(f"sequence length {length} exceeds the model's max_len {max_len} (position embeddings)")


def _tokens(collated: dict, config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    missing = [key for key in ("input_ids", "attention_mask") if key not in collated]
    if missing:
        raise KeyError(f"the collated batch lacks {missing}; present: {sorted(collated)}")
    input_ids = np.asarray(collated["input_ids"])
    attention_mask = np.asarray(collated["attention_mask"])
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must both be [B, L]")
    if not np.issubdtype(input_ids.dtype, np.integer):
        raise ValueError(f"input_ids must be integers, got {input_ids.dtype}")
    if attention_mask.dtype != np.bool_:
        raise ValueError(f"attention_mask must be bool, got {attention_mask.dtype}")
    if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= config.vocab_size):
        raise ValueError(
            f"input_ids hold ids in [{input_ids.min()}, {input_ids.max()}], "
            f"outside the vocabulary [0, {config.vocab_size})"
        )
    check_length(input_ids.shape[1], config.max_len)
    return input_ids.astype(np.int32), attention_mask
