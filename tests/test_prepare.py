"""prepare_dataset on awkward but valid input: BOMs, long and multi-line fields, duplicates, re-runs.
(Refused input is tests/test_bad_inputs.py's; the dataset layout is tests/test_dataset.py's.)"""

import csv
import json
import os

import pytest

from ml_patterns.errors import OptionError
from ml_patterns.molecules.config import PrepareConfig
from ml_patterns.molecules.prepare import ConflictingLabelsWarning, prepare_dataset, verify_checksums
from ml_patterns.molecules.sources import MAX_SMILES_CHARS, SourceError

ALL_TRAIN = PrepareConfig(rdkit_properties=(), val_fraction=0.0, test_fraction=0.0)


def prepare_csv(tmp_path, content, *, name="mols.csv", out="ds", **kwargs):
    source = tmp_path / name
    source.write_bytes(content if isinstance(content, bytes) else content.encode())
    options = dict(csv_path=source, target_cols=["y"], config=ALL_TRAIN, progress=False)
    return prepare_dataset(tmp_path / out, **{**options, **kwargs})


def skipped_lines(manifest):
    return [(row["line"], row["reason"]) for row in manifest["skipped"]]


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    manifest = prepare_csv(tmp_path, b"\xef\xbb\xbfsmiles,y\r\nCCO,1\r\nCCN,2\r\n")
    assert manifest["counts"]["molecules"] == 2


def test_a_huge_field_is_skipped_with_its_line_and_the_field_limit_restored(tmp_path):
    limit = csv.field_size_limit()
    huge = "C" * 1_000_000
    manifest = prepare_csv(tmp_path, f"smiles,y\nCCO,1\n{huge},2\nCCN,3\n")
    assert manifest["counts"] == {"rows_read": 3, "molecules": 2, "skipped": 1}
    assert skipped_lines(manifest) == [
        (3, f"SMILES of 1000000 characters, over {MAX_SMILES_CHARS} (an unbalanced quote?)")
    ]
    assert csv.field_size_limit() == limit


def test_a_byte_that_is_not_utf8_is_reported_on_its_true_line(tmp_path):
    # 2,000 lines before it: a text-mode reader decodes 8 KB ahead and would blame an earlier line.
    lines = [b"smiles,y"] + [b"CCO,1"] * 2000 + [b"CC\xe9O,1", b"CCN,2"]
    with pytest.raises(SourceError, match=r"mols\.csv, line 2002: byte 0xe9 at column 3 is not UTF-8"):
        prepare_csv(tmp_path, b"\n".join(lines) + b"\n")
    assert not (tmp_path / "ds").exists()


def test_a_record_spanning_lines_does_not_shift_the_lines_after_it(tmp_path):
    text = 'smiles,y,note\nCCO,1,ok\nCCN,2,"two\nlines"\nCCC,3,ok\nnot-a-smiles,4,ok\nCC,oops,ok\n'
    manifest = prepare_csv(tmp_path, text)
    assert manifest["counts"] == {"rows_read": 5, "molecules": 3, "skipped": 2}
    assert [line for line, _ in skipped_lines(manifest)] == [6, 7]


def test_a_quoted_line_break_inside_a_smiles_is_reported_at_the_record_start(tmp_path):
    manifest = prepare_csv(tmp_path, 'smiles,y\nCCO,1\n"CC\nO",2\nCCN,3\n')
    assert [line for line, _ in skipped_lines(manifest)] == [3]
    assert manifest["counts"]["molecules"] == 2


def test_rows_with_a_wrong_number_of_fields_are_skipped_and_reported(tmp_path):
    manifest = prepare_csv(tmp_path, "smiles,y\nCCO,1\nCCN,2,3\nCCC\nCCCC,4\n")
    assert skipped_lines(manifest) == [(3, "3 fields where the header has 2"), (4, "1 fields where the header has 2")]


def test_duplicate_molecules_are_counted(tmp_path):
    # OCC is CCO written differently: duplicates are found on RDKit's canonical SMILES.
    manifest = prepare_csv(tmp_path, "smiles,y\nCCO,1\nCCN,2\nOCC,1.0\nCCN,2\n")
    assert manifest["duplicates"] == {"rows": 2, "conflicting": 0, "conflicts": []}
    assert manifest["counts"]["molecules"] == 4  # kept: dropping rows is the user's call


def test_duplicate_molecules_with_different_labels_are_warned_about_and_listed(tmp_path):
    with pytest.warns(
        ConflictingLabelsWarning,
        match=r"1 row\(s\) repeat a molecule with different labels "
        r"\(first: line 4 vs line 2, OCC\)",
    ):
        manifest = prepare_csv(tmp_path, "smiles,y\nCCO,1\nCCN,2\nOCC,5\n")
    assert manifest["duplicates"]["conflicts"] == [
        {"line": 4, "first_line": 2, "smiles": "OCC", "labels": {"y": 5.0}, "first_labels": {"y": 1.0}}
    ]
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["duplicates"]["conflicting"] == 1


def test_the_default_dataset_has_duplicates_but_no_conflicting_labels(default_dataset):
    duplicates = default_dataset[1]["duplicates"]
    assert duplicates["rows"] > 0 and duplicates["conflicting"] == 0


def test_overwrite_replaces_a_dataset_prepare_wrote(tmp_path):
    prepare_csv(
        tmp_path,
        "smiles,y\nCCO,1\nCCN,2\n",
        config=PrepareConfig(rdkit_properties=(), shard_size=1, val_fraction=0.0, test_fraction=0.0),
    )
    assert len(os.listdir(tmp_path / "ds" / "shards")) == 2
    manifest = prepare_csv(tmp_path, "smiles,y\nCCC,3\nCCCC,4\n", overwrite=True)
    assert manifest["counts"]["molecules"] == 2
    assert os.listdir(tmp_path / "ds" / "shards") == ["shard-00000.jsonl"]
    assert sorted(os.listdir(tmp_path)) == ["ds", "mols.csv"]  # no staging or old copy left
    assert verify_checksums(tmp_path / "ds") == []


def test_a_csv_beside_the_output_is_fine(tmp_path):
    prepare_csv(tmp_path, "smiles,y\nCCO,1\nCCN,2\n", name="ds.csv", out="ds")
    assert (tmp_path / "ds.csv").is_file() and (tmp_path / "ds" / "manifest.json").is_file()


@pytest.mark.parametrize(
    "options, message, flag",
    [
        (dict(config=PrepareConfig(seed=-1)), r"seed must be an integer >= 0, got -1", "--seed"),
        (
            dict(config=PrepareConfig(rdkit_properties=("Bogus",))),
            r"rdkit_properties names unknown RDKit properties \['Bogus'\]; known: MolLogP",
            "--rdkit-properties",
        ),
        (
            dict(config=PrepareConfig(rdkit_properties=("TPSA",))),
            r"rdkit_properties \['TPSA'\] are also source columns",
            "--rdkit-properties",
        ),
    ],
)
def test_bad_options_name_the_parameter_and_the_flag(tmp_path, options, message, flag):
    with pytest.raises(OptionError, match=message) as caught:
        prepare_dataset(tmp_path / "ds", progress=False, **options)
    assert caught.value.cli_message.startswith(flag + " ")
    assert os.listdir(tmp_path) == []
