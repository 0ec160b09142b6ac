"""A molecule table with missing labels and a binary target, written from RDKit's NCI set: the
parity suite's set with holes (and the compare metrics' test set)."""

import numpy as np

from ml_patterns.molecules.sources import default_csv_path


def write_sparse_source(path, molecules: int, seed: int = 0) -> None:
    """The first ``molecules`` of RDKit's NCI set as a CSV: TPSA with a third of its values missing, a
    second target (TPSA / 10 rounded, with other holes) and a binary one (TPSA above 60, missing
    where TPSA is); every row keeps one label."""
    rng = np.random.default_rng(seed)
    rows = [line.split(",") for line in default_csv_path().read_text().splitlines() if not line.startswith("#")]
    lines = ["smiles,tpsa,coarse,active"]
    for smiles, tpsa in rows[:molecules]:
        hole = rng.integers(3)  # 0: tpsa missing, 1: coarse missing, 2: both present
        active = "" if hole == 0 else int(float(tpsa) > 60)
        lines.append(f"{smiles},{'' if hole == 0 else tpsa},{'NA' if hole == 1 else round(float(tpsa) / 10)},{active}")
    path.write_text("\n".join(lines) + "\n")
