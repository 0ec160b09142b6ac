"""Train/val/test assignment of a prepared dataset's molecules, by whole groups.

A group never straddles two splits. In ``"random"`` mode a group is one molecule (every row with the
same canonical SMILES), so a repeated molecule cannot be trained on and tested on; in ``"scaffold"``
mode it is every molecule with the same Bemis-Murcko scaffold (RDKit's ``MurckoScaffold``; acyclic
molecules share the empty scaffold), so the test split holds chemotypes the model never saw.

Sizes follow ``val_fraction``/``test_fraction`` of the molecules, rounded, as closely as whole
groups allow. A val or test split that is asked for (fraction > 0) but would hold fewer than
``MIN_EVAL_MOLECULES`` is refused, and one under ``FEW_EVAL_MOLECULES`` is warned about (see there).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from ml_patterns.molecules.config import PrepareConfig
from ml_patterns.molecules.sources import SourceError

SPLIT_MODES = ("random", "scaffold")
# A metric's standard error over n molecules is its spread / sqrt(n): below 10 molecules that is
# over a third of the spread (1/sqrt(10) = 0.32), so an MAE or a loss on such a split cannot tell two
# models or two epochs apart; preparing one is refused (hold none out with fraction 0 instead).
MIN_EVAL_MOLECULES = 10
# Below 100 (1/sqrt(100) = 10% of the spread) the split is usable but noisy: warned about.
FEW_EVAL_MOLECULES = 100


class TinySplitWarning(UserWarning):
    """A val or test split small enough that metrics on it are noisy."""


def group_keys(canonical: Sequence[str], mode: str) -> list[str]:
    """The group of every molecule (``canonical`` SMILES, RDKit's): itself, or its scaffold."""
    if mode == "random":
        return list(canonical)
    if mode != "scaffold":
        raise ValueError(f"split mode must be one of {SPLIT_MODES}, got {mode!r}")
    from rdkit.Chem.Scaffolds import MurckoScaffold

    scaffolds: dict[str, str] = {}
    for smiles in canonical:
        if smiles not in scaffolds:
            scaffolds[smiles] = MurckoScaffold.MurckoScaffoldSmiles(smiles=smiles, includeChirality=False)
    return [scaffolds[smiles] for smiles in canonical]


def assign_splits(keys: Sequence[str], config: PrepareConfig, mode: str = "random") -> np.ndarray:
    """Split names (``object [n]``: 'train'/'val'/'test') for molecules grouped by ``keys``; a function
    of the keys, the fractions, the mode and ``config.seed`` alone.

    ``"random"``: groups in a seeded random order fill val, then test, then train (with one molecule
    per group this is the row-level permutation split). ``"scaffold"``: groups largest first (ties in
    seeded random order) fill train, then val, then test, so the rare scaffolds are held out.
    """
    n = len(keys)
    members: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    groups = list(members.values())
    order = [groups[g] for g in np.random.default_rng(config.seed).permutation(len(groups))]
    n_val, n_test = int(round(n * config.val_fraction)), int(round(n * config.test_fraction))
    assignment = np.full(n, "train", dtype=object)
    counts = {"train": 0, "val": 0, "test": 0}
    if mode == "scaffold":
        order.sort(key=len, reverse=True)  # stable: equal sizes keep their seeded order
        targets = (("train", n - n_val - n_test), ("val", n_val))
        fallback = "test"
    else:
        targets = (("val", n_val), ("test", n_test))
        fallback = "train"
    for group in order:
        # The first split with room for the whole group; a group too big for any goes to the last one.
        split = next((name for name, target in targets if counts[name] + len(group) <= target), fallback)
        assignment[group] = split
        counts[split] += len(group)
    return assignment


def check_split_sizes(assignment: np.ndarray, config: PrepareConfig, source: str) -> None:
    """Refuses a requested val/test split under ``MIN_EVAL_MOLECULES``; warns under ``FEW_EVAL_MOLECULES``."""
    n = len(assignment)
    for name, fraction in (("val", config.val_fraction), ("test", config.test_fraction)):
        if fraction <= 0:
            continue
        count = int((assignment == name).sum())
        flag = f"--{name}-fraction"
        if count < MIN_EVAL_MOLECULES:
            raise SourceError(
                f"{source}: the {name} split would hold {count} of {n} molecules ({name}_fraction {fraction:g}), "
                f"under {MIN_EVAL_MOLECULES}: a metric over so few is noise; raise {flag} (or the data), "
                f"or pass {flag} 0 to hold none out"
            )
        if count < FEW_EVAL_MOLECULES:
            warnings.warn(
                f"{source}: the {name} split holds {count} molecules, under {FEW_EVAL_MOLECULES}: metrics on it "
                f"vary by about 1/sqrt({count}) = {count**-0.5:.0%} of their spread from one split to another",
                TinySplitWarning,
                stacklevel=3,
            )
