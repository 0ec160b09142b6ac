"""A prepared dataset's targets: each one's kind (regression or classification), the checks that it
can be learned, and its manifest entry (``targets.NAME``).

The kind of a target, unless ``prepare --task NAME=KIND`` names it:

- classification (binary) when its labelled values are exactly ``{0, 1}``;
- regression otherwise.

Only the binary case is guessed: a column of small integers (a count of rings, of H-bond donors) is
as likely a quantity as a class id, and mistaking one for the other is silent. A multiclass target is
asked for (``--task NAME=classification``); its labels must then be the integers ``0..C-1``, every
class present in the data (``C`` at most ``MAX_CLASSES``). A classification target is not
standardized (its manifest mean/std are 0 and 1, and its loss is the cross-entropy of class ids).
"""

from __future__ import annotations

import numpy as np

from ml_patterns.io import printable
from ml_patterns.molecules.config import CLASSIFICATION, REGRESSION
from ml_patterns.molecules.manifest import SPLITS
from ml_patterns.molecules.sources import SourceError

# More classes than this is seldom a classification of molecules, and more often a numeric column
# asked for by mistake; a head of this many logits is still small.
MAX_CLASSES = 100


def label_matrix(rows, target_names: list[str]) -> np.ndarray:
    """``float64 [rows, targets]`` of ``SourceRow``s' labels, NaN where a row's label is missing."""
    return np.array(
        [[np.nan if row.targets[name] is None else row.targets[name] for name in target_names] for row in rows],
        dtype=np.float64,
    ).reshape(len(rows), len(target_names))


def target_kind(values: np.ndarray, column: str, requested: str | None, source: str) -> tuple[str, int]:
    """``(kind, classes)`` of a target from its labelled ``values`` (float64, no NaN) and the kind
    ``requested`` for it (``None``: guessed, see the module docstring); ``classes`` is 0 for regression.
    Raises ``SourceError`` naming the column when classification is asked for labels that are not
    ``0..C-1``."""
    distinct = np.unique(values)
    if requested == REGRESSION or (requested is None and not np.array_equal(distinct, [0.0, 1.0])):
        return REGRESSION, 0
    classes = int(distinct[-1]) + 1 if distinct.size else 0
    integers = bool(np.all(distinct == np.round(distinct)))
    if not integers or distinct[0] < 0 or not 2 <= classes <= MAX_CLASSES or distinct.size != classes:
        shown = ", ".join(f"{v:g}" for v in distinct[:8]) + (", ..." if distinct.size > 8 else "")
        raise SourceError(
            f"{source}: {printable(column)!r} is to be a classification target, so its labels must be the class "
            f"ids 0..C-1 (2 <= C <= {MAX_CLASSES}, each present); they are {{{shown}}}: renumber the classes, or "
            f"drop --task {column}=classification"
        )
    return CLASSIFICATION, classes


def check_learnable(values: np.ndarray, splits: np.ndarray, column: str, source: str) -> None:
    """Refuses a target (``values`` float64 ``[rows]``, NaN where missing) no training molecule has a
    label for (its head would learn nothing, its statistics would be undefined), and one with a single
    value over the training split: nothing to learn, and standardizing it would divide by zero."""
    train = values[(splits == "train") & ~np.isnan(values)]
    if not train.size:
        elsewhere = int((~np.isnan(values)).sum())
        raise SourceError(
            f"{source}: label column {printable(column)!r} has no value for any training molecule ({elsewhere} "
            "labelled in val/test): its head would learn nothing; drop the column or label more molecules"
        )
    if train.min() == train.max():
        raise SourceError(
            f"{source}: label column {printable(column)!r} has one value ({train[0]:g}) for every labelled training "
            "molecule: nothing to learn, and its standard deviation is 0; drop the column or fix the data"
        )


def target_summary(values: np.ndarray, splits: np.ndarray, kind: str, classes: int) -> dict:
    """The manifest's entry of a target: its kind, the mean/std of its labelled training rows
    (regression; 0 and 1 for classification, which is not standardized), its labelled rows per split,
    and, for classification, its number of classes and each class's training rows."""
    labelled = ~np.isnan(values)
    train = values[labelled & (splits == "train")]
    summary = {"task": kind}
    if kind == CLASSIFICATION:
        counts = np.bincount(train.astype(np.int64), minlength=classes)
        summary.update(mean=0.0, std=1.0, classes=classes, class_counts_train=[int(n) for n in counts])
    else:
        summary.update(mean=float(train.mean()), std=float(train.std()))
    summary["labelled"] = {name: int((labelled & (splits == name)).sum()) for name in SPLITS}
    return summary
