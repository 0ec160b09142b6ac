"""Framework-free configuration dataclasses: one place for every default, each with its reason."""

from __future__ import annotations

import dataclasses

# Properties computed with RDKit for the default dataset; each name is the RDKit descriptor that
# ml_patterns.prepare computes (see RDKIT_PROPERTIES there).
DEFAULT_RDKIT_PROPERTIES = ("MolLogP", "MolWt", "NumRings", "NumHDonors")


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """How ``ml-patterns prepare`` turns a molecule table into the lazy on-disk layout."""

    # Seeds the train/val/test split; the whole output is a deterministic function of it.
    seed: int = 0
    # Fractions of the molecules held out; train gets the rest. 10/10 is small enough to keep
    # 4,000 training molecules of the 5,000 default ones.
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    # Records per shard file. A shard is opened once and then read line by line, so this only
    # bounds the size of one file, not what is held in memory.
    shard_size: int = 512
    # RDKit descriptors added as extra targets (the default dataset's multi-task labels).
    rdkit_properties: tuple[str, ...] = DEFAULT_RDKIT_PROPERTIES

    def __post_init__(self) -> None:
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1):
            raise ValueError(f"split fractions must lie in [0, 1), got val={self.val_fraction}, test={self.test_fraction}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave some molecules for training")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {self.shard_size}")
