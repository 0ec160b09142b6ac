"""prepare on the files users arrive with: a ChEMBL-style .smi plus an activity CSV joined on the
id, an SDF with a property, a TSV or semicolon table, target names written with spaces."""

import json

import pytest

from ml_patterns.errors import OptionError
from ml_patterns.molecules.config import PrepareConfig
from ml_patterns.molecules.prepare import prepare_dataset
from ml_patterns.molecules.sources import SourceError

ALL_TRAIN = PrepareConfig(rdkit_properties=(), val_fraction=0.0, test_fraction=0.0)
MOLECULES = ["CCO", "CCN", "c1ccccc1O", "CC(=O)O", "CCCl"]


def write_chembl_pair(tmp_path, *, header=False):
    """As RDKit's Contrib/FreeWilson CHEMBL2321810.smi (no header, "SMILES id") and _act.csv
    ("Name,Act"): one id without activity, one activity without a molecule."""
    lines = [f"{smiles} {1520000 + i}" for i, smiles in enumerate(MOLECULES)]
    (tmp_path / "set.smi").write_text("\n".join((["SMILES Name"] if header else []) + lines) + "\n")
    activities = [f"{1520000 + i},{5.0 + i / 4:.2f}" for i in range(len(MOLECULES) - 1)] + ["1999999,7.00"]
    (tmp_path / "set_act.csv").write_text("Name,Act\n" + "\n".join(activities) + "\n")


def prepare_chembl_pair(tmp_path) -> dict:
    options = dict(target_cols=["Act"], labels_path=tmp_path / "set_act.csv", id_col="Name", config=ALL_TRAIN)
    return prepare_dataset(tmp_path / "ds", csv_path=tmp_path / "set.smi", progress=False, **options)


@pytest.mark.parametrize("header", [False, True])
def test_a_smi_file_joined_to_an_activity_csv_prepares_in_one_call(tmp_path, header):
    write_chembl_pair(tmp_path, header=header)
    manifest = prepare_chembl_pair(tmp_path)
    assert manifest["source"]["format"] == "smi"
    assert manifest["counts"]["molecules"] == 4
    labels = manifest["labels"]
    assert (labels["labelled_molecules"], labels["molecules_without_label"], labels["labels_without_molecule"]) == (
        4,
        1,
        1,
    )
    assert labels["examples"] == {"molecules_without_label": ["1520004"], "labels_without_molecule": ["1999999"]}
    first = json.loads((tmp_path / "ds" / "shards" / "shard-00000.jsonl").read_text().splitlines()[0])
    assert (first["smiles"], first["label"]) == ("CCO", 5.0)


def test_the_cli_prepares_the_chembl_pair_with_trimmed_target_names(tmp_path, capsys):
    from ml_patterns_app.cli import main

    write_chembl_pair(tmp_path)
    (tmp_path / "set_act.csv").write_text(
        "Name,Act,active\n" + "".join(f"{1520000 + i},{5 + i},{i % 2}\n" for i in range(len(MOLECULES)))
    )
    argv = ["prepare", "--csv", str(tmp_path / "set.smi"), "--labels", str(tmp_path / "set_act.csv")]
    argv += ["--id-col", "Name", "--target-cols", "Act, active", "--out", str(tmp_path / "ds"), "--quiet"]
    argv += ["--rdkit-properties", "", "--val-fraction", "0", "--test-fraction", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "5 molecules labelled, 0 without a label row" in out
    assert list(json.loads((tmp_path / "ds" / "manifest.json").read_text())["targets"]) == ["Act", "active"]


def test_an_sdf_with_a_property_prepares_in_one_call(tmp_path):
    from rdkit import Chem

    path = tmp_path / "mols.sdf"
    with Chem.SDWriter(str(path)) as writer:
        for i, smiles in enumerate(MOLECULES):
            mol = Chem.MolFromSmiles(smiles)
            mol.SetProp("_Name", f"mol{i}")
            mol.SetProp("solubility", f"{-1.5 * i:.2f}")
            writer.write(mol)
    manifest = prepare_dataset(
        tmp_path / "ds", csv_path=path, target_cols=["solubility"], config=ALL_TRAIN, progress=False
    )
    assert manifest["source"]["format"] == "sdf"
    assert manifest["counts"]["molecules"] == len(MOLECULES)
    records = [json.loads(line) for line in (tmp_path / "ds" / "shards" / "shard-00000.jsonl").read_text().splitlines()]
    assert [r["smiles"] for r in records] == [Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in MOLECULES]
    assert [r["label"] for r in records] == [-1.5 * i for i in range(len(MOLECULES))]


def test_an_sdf_missing_the_property_names_the_columns_it_has(tmp_path):
    from rdkit import Chem

    path = tmp_path / "mols.sdf"
    with Chem.SDWriter(str(path)) as writer:
        mol = Chem.MolFromSmiles("CCO")
        mol.SetProp("logS", "1.0")
        writer.write(mol)
    with pytest.raises(SourceError, match=r"column\(s\) \['solubility'\] not in the header .*'logS'"):
        prepare_dataset(tmp_path / "ds", csv_path=path, target_cols=["solubility"], config=ALL_TRAIN, progress=False)


@pytest.mark.parametrize("delimiter, name", [("\t", "mols.tsv"), (";", "mols.csv"), ("\t", "mols.txt")])
def test_the_delimiter_is_sniffed(tmp_path, delimiter, name):
    rows = ["smiles", "y"], *([smiles, str(i)] for i, smiles in enumerate(MOLECULES))
    (tmp_path / name).write_text("".join(delimiter.join(row) + "\n" for row in rows))
    manifest = prepare_dataset(
        tmp_path / "ds", csv_path=tmp_path / name, target_cols=["y"], config=ALL_TRAIN, progress=False
    )
    assert manifest["counts"] == {"rows_read": 5, "molecules": 5, "skipped": 0}


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(target_cols=[" y"]), r"target_cols: names \[' y'\] are empty or have surrounding spaces"),
        (dict(target_cols=["y", "y"]), r"target_cols names \['y'\] more than once"),
        (dict(id_col="id"), r"id_col and labels_path go together"),
        (dict(sep=";;"), r"sep must be one character"),
    ],
)
def test_bad_source_options_are_refused_before_reading(tmp_path, options, message):
    (tmp_path / "mols.csv").write_text("smiles,y\nCCO,1\n")
    with pytest.raises(OptionError, match=message):
        prepare_dataset(
            tmp_path / "ds", **{"csv_path": tmp_path / "mols.csv", "target_cols": ["y"], "progress": False, **options}
        )
    assert not (tmp_path / "ds").exists()


def test_a_label_file_repeating_an_id_is_refused_with_both_lines(tmp_path):
    write_chembl_pair(tmp_path)
    (tmp_path / "set_act.csv").write_text("Name,Act\n1520000,5\n1520001,6\n1520000,7\n")
    with pytest.raises(SourceError, match=r"set_act\.csv: id '1520000' has labels on lines 2 and 4"):
        prepare_chembl_pair(tmp_path)


def test_a_refused_file_prints_no_progress_bar_first(tmp_path, capsys):
    from ml_patterns_app.cli import main

    (tmp_path / "mols.csv").write_text("smiles,y\nCCO,1\n")
    argv = ["prepare", "--csv", str(tmp_path / "mols.csv"), "--target-cols", "logP", "--out", str(tmp_path / "ds")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not in the header" in err and "parsing molecules" not in err
