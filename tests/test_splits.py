"""Train/val/test splits by whole groups: a repeated molecule never crosses splits, a scaffold split
keeps every scaffold in one split, tiny val/test splits are refused or warned about."""

import json
import warnings

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

from ml_patterns.errors import OptionError
from ml_patterns.molecules.config import PrepareConfig
from ml_patterns.molecules.prepare import prepare_dataset
from ml_patterns.molecules.sources import SourceError
from ml_patterns.molecules.splits import MIN_EVAL_MOLECULES, TinySplitWarning, assign_splits

RINGS = ["c1ccccc1", "C1CCCCC1", "c1ccncc1", "C1CCNCC1", "c1ccoc1", "c1ccsc1", "C1CCOC1", "c1ccc2ccccc2c1"]
CHAINS = ["C", "CC", "CCC", "CCCC", "CCO", "CCN", "CCS", "OCC", "NCC", "CC(C)"]


def molecules() -> list[str]:
    """87 molecules: 8 ring systems with up to 14 substituents each, a few acyclic ones, and 12
    repeats written another way (same canonical SMILES)."""
    out = [f"{chain}{ring}" for i, ring in enumerate(RINGS) for chain in CHAINS[: 4 + i]]
    out += [f"{a}{b}" for a in CHAINS[:6] for b in ("C(=O)O", "N", "O")]
    out += [Chem.MolToSmiles(Chem.MolFromSmiles(s), rootedAtAtom=1, canonical=False) for s in out[::8]]
    return out


def prepared_splits(tmp_path, mode, seed=0) -> list[tuple[str, str]]:
    smiles = molecules()
    labels = {c: i / 10 for i, c in enumerate(sorted({canonical(s) for s in smiles}))}  # a repeat: same label
    values = [labels[canonical(s)] for s in smiles]
    (tmp_path / "mols.csv").write_text("smiles,y\n" + "".join(f"{s},{v:.3f}\n" for s, v in zip(smiles, values)))
    out = tmp_path / f"{mode}-{seed}"
    config = PrepareConfig(rdkit_properties=(), seed=seed, val_fraction=0.2, test_fraction=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TinySplitWarning)  # about 17 molecules per held-out split, on purpose
        prepare_dataset(
            out, csv_path=tmp_path / "mols.csv", target_cols=["y"], config=config, split=mode, progress=False
        )
    index = json.loads((out / "index.json").read_text())
    records = [
        json.loads(line) for path in sorted((out / "shards").iterdir()) for line in path.read_text().splitlines()
    ]
    return [(record["smiles"], entry["split"]) for record, entry in zip(records, index)]


def splits_of(rows, key) -> dict[str, set[str]]:
    groups: dict[str, set[str]] = {}
    for smiles, split in rows:
        groups.setdefault(key(smiles), set()).add(split)
    return groups


def canonical(smiles: str) -> str:
    return Chem.MolToSmiles(Chem.MolFromSmiles(smiles))


@pytest.mark.parametrize("mode", ["random", "scaffold"])
def test_repeated_molecules_never_cross_splits(tmp_path, mode):
    rows = prepared_splits(tmp_path, mode)
    by_molecule = splits_of(rows, canonical)
    assert len(by_molecule) < len(rows)  # the data does repeat molecules
    assert all(len(splits) == 1 for splits in by_molecule.values())
    assert {split for _, split in rows} == {"train", "val", "test"}


def test_a_scaffold_split_puts_every_scaffold_in_one_split(tmp_path):
    rows = prepared_splits(tmp_path, "scaffold")
    by_scaffold = splits_of(rows, lambda s: MurckoScaffold.MurckoScaffoldSmiles(smiles=s))
    assert len(by_scaffold) >= 8
    assert all(len(splits) == 1 for splits in by_scaffold.values()), by_scaffold
    # Largest scaffolds train; the held-out splits hold the rare ones.
    sizes = {
        scaffold: sum(MurckoScaffold.MurckoScaffoldSmiles(smiles=s) == scaffold for s, _ in rows)
        for scaffold in by_scaffold
    }
    largest = max(sizes, key=sizes.get)
    assert by_scaffold[largest] == {"train"}


def test_a_split_is_a_function_of_the_seed(tmp_path):
    (tmp_path / "again").mkdir()
    for mode in ("scaffold", "random"):
        assert prepared_splits(tmp_path, mode, seed=3) == prepared_splits(tmp_path / "again", mode, seed=3)
    seed_5 = [split for _, split in prepared_splits(tmp_path, "random", seed=5)]
    assert seed_5 != [split for _, split in prepared_splits(tmp_path, "random", seed=4)]


def test_one_molecule_groups_reproduce_the_row_permutation():
    config = PrepareConfig(seed=5, val_fraction=0.2, test_fraction=0.1)
    order = np.random.default_rng(5).permutation(50)
    assignment = assign_splits([f"m{i}" for i in range(50)], config)
    assert set(order[:10]) == set(np.flatnonzero(assignment == "val"))
    assert set(order[10:15]) == set(np.flatnonzero(assignment == "test"))


def prepare_with_default_fractions(tmp_path) -> dict:
    config = PrepareConfig(rdkit_properties=())  # val and test 10% each
    return prepare_dataset(
        tmp_path / "ds", csv_path=tmp_path / "mols.csv", target_cols=["y"], config=config, progress=False
    )


def test_a_tiny_held_out_split_is_refused_with_the_floor_and_the_way_out(tmp_path):
    (tmp_path / "mols.csv").write_text(
        "smiles,y\n"
        + "".join(f"{c}{ring},{i}\n" for i, (c, ring) in enumerate((c, r) for r in RINGS[:2] for c in CHAINS))
    )
    with pytest.raises(
        SourceError,
        match=rf"the val split would hold 2 of 20 molecules .* under {MIN_EVAL_MOLECULES}.*--val-fraction 0",
    ):
        prepare_with_default_fractions(tmp_path)
    assert not (tmp_path / "ds").exists()


def test_a_small_held_out_split_is_warned_about(tmp_path):
    (tmp_path / "mols.csv").write_text(
        "smiles,y\n" + "".join(f"{'C' * (i % 40 + 1)}c1ccccc1{'O' * (i // 40)},{i}\n" for i in range(150))
    )
    with pytest.warns(TinySplitWarning, match=r"the (val|test) split holds 15 molecules, under 100"):
        prepare_with_default_fractions(tmp_path)


def test_an_unknown_split_mode_is_refused(tmp_path):
    with pytest.raises(OptionError, match=r"split must be one of random, scaffold, got 'cluster'"):
        prepare_dataset(tmp_path / "ds", split="cluster", progress=False)
