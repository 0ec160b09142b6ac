"""A target's kind: a 0/1 column is binary classification, any other regression, unless
``task_kinds`` (``prepare --task NAME=KIND``) says; recorded in the manifest and in ModelConfig."""

import re

import pytest

from ml_patterns.errors import OptionError
from ml_patterns.molecules.config import ModelConfig, PrepareConfig
from ml_patterns.molecules.prepare import prepare_dataset
from ml_patterns.molecules.sources import SourceError

ALL_TRAIN = PrepareConfig(rdkit_properties=(), val_fraction=0.0, test_fraction=0.0)
SOURCE = "smiles,active,rings,y\nCCO,1,0,0.5\nCCN,0,1,1.5\nCCC,1,2,NA\nCCCC,0,2,2.5\nc1ccccc1,NA,1,3.5\n"


def prepare(tmp_path, content=SOURCE, targets=("active", "rings", "y"), **kwargs):
    source = tmp_path / "mols.csv"
    source.write_text(content)
    options = dict(csv_path=source, target_cols=list(targets), config=ALL_TRAIN, progress=False)
    return prepare_dataset(tmp_path / "ds", **{**options, **kwargs})


def test_a_zero_one_column_is_binary_and_small_integers_stay_regression(tmp_path):
    targets = prepare(tmp_path)["targets"]
    assert targets["active"] == {
        "task": "classification",
        "mean": 0.0,
        "std": 1.0,
        "classes": 2,
        "class_counts_train": [2, 2],
        "labelled": {"train": 4, "val": 0, "test": 0},
    }
    assert targets["rings"]["task"] == "regression" and targets["rings"]["std"] > 0
    assert targets["y"]["task"] == "regression"


def test_the_kind_can_be_forced_and_reaches_the_model_config(tmp_path):
    manifest = prepare(tmp_path, task_kinds={"rings": "classification", "active": "regression"})
    assert manifest["targets"]["rings"]["classes"] == 3
    assert manifest["targets"]["active"]["task"] == "regression"
    config = ModelConfig.from_manifest(manifest)
    assert config.task_classes == (0, 3, 0)
    assert config.classes("rings") == 3 and config.regression_tasks == ("active", "y")
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_a_regression_only_manifest_gives_the_config_no_classes(tmp_path):
    config = ModelConfig.from_manifest(prepare(tmp_path, targets=("y",)))
    assert config.task_classes == () and config.classes("y") == 0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("0.5,1.5,2.5,3.5,4.5", r"'y' is to be a classification target, .* they are \{0.5, 1.5"),
        ("1,2,3,1,2", r"class ids 0..C-1 .* they are \{1, 2, 3\}"),  # no class 0
        ("0,2,0,2,2", r"they are \{0, 2\}"),  # class 1 absent
    ],
)
def test_classification_of_labels_that_are_not_class_ids_is_refused(tmp_path, values, message):
    rows = "".join(
        f"{smiles},{value}\n" for smiles, value in zip(["CCO", "CCN", "CCC", "CCCC", "CO"], values.split(","))
    )
    with pytest.raises(SourceError, match=message):
        prepare(tmp_path, "smiles,y\n" + rows, targets=("y",), task_kinds={"y": "classification"})


@pytest.mark.parametrize(
    ("task_kinds", "message"),
    [({"nope": "regression"}, r"--task names \['nope'\]"), ({"y": "ordinal"}, r"kinds must be one of")],
)
def test_bad_task_options_are_refused_before_reading(tmp_path, task_kinds, message):
    with pytest.raises(OptionError) as caught:
        prepare(tmp_path, task_kinds=task_kinds)
    assert re.search(message, caught.value.cli_message)
    assert not (tmp_path / "ds").exists()


def test_the_config_refuses_a_bad_number_of_classes():
    with pytest.raises(ValueError, match="task_classes must be 0"):
        ModelConfig(tasks=("a",), target_mean=(0.0,), target_std=(1.0,), task_classes=(1,))
    with pytest.raises(ValueError, match=r"task_classes \(2\) needs one value per task \(1\)"):
        ModelConfig(tasks=("a",), target_mean=(0.0,), target_std=(1.0,), task_classes=(0, 2))


def test_the_cli_sets_kinds_with_task_and_prints_them(tmp_path, capsys):
    from ml_patterns_app.cli import main

    (tmp_path / "mols.csv").write_text(SOURCE)
    argv = ["prepare", "--csv", str(tmp_path / "mols.csv"), "--target-cols", "active,rings,y", "--quiet"]
    argv += ["--task", "rings=classification", "--task", "y=regression", "--out", str(tmp_path / "ds")]
    argv += ["--val-fraction", "0", "--test-fraction", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "active       classification, 2 classes (train rows 2/2)  labelled 4" in out
    assert "rings        classification, 3 classes (train rows 1/2/2)  labelled 5" in out
    with pytest.raises(SystemExit) as exited:
        main(argv[:-4] + ["--task", "rings", "--out", str(tmp_path / "other")])
    assert exited.value.code == 2
    assert "expected NAME=KIND" in capsys.readouterr().err
