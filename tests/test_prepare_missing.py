"""Missing labels from the source to the model's batch: prepare keeps a row missing some targets
(``null`` in its shard), counts the labelled rows per target, takes the statistics over the labelled
training rows only; collate masks the missing labels; the batch leaves them out of the loss."""

import json

import numpy as np
import pytest

from ml_patterns.collate import collate_arrays
from ml_patterns.data import LazyDataset
from ml_patterns.molecules.batches import prepare_batch
from ml_patterns.molecules.config import ModelConfig, PrepareConfig
from ml_patterns.molecules.prepare import prepare_dataset
from ml_patterns.molecules.sources import SourceError

ALL_TRAIN = PrepareConfig(rdkit_properties=(), val_fraction=0.0, test_fraction=0.0)
# a: 4 values, one row missing (empty field); b: 3 values, "NA" and "nan" missing; the last row has
# neither and is dropped.
HOLES = "smiles,a,b\nCCO,1,10\nCCN,2,NA\nCCC,,30\nCCCC,4,nan\nc1ccccc1,5,50\nCCCl,NA,\n"


def prepare(tmp_path, content=HOLES, targets=("a", "b"), config=ALL_TRAIN):
    source = tmp_path / "mols.csv"
    source.write_text(content)
    options = dict(csv_path=source, target_cols=list(targets), config=config, progress=False)
    return prepare_dataset(tmp_path / "ds", **options)


def test_rows_missing_some_labels_are_kept_and_counted(tmp_path):
    manifest = prepare(tmp_path)
    assert manifest["counts"] == {"rows_read": 6, "molecules": 5, "skipped": 1}
    assert manifest["skipped"][0]["line"] == 7
    assert manifest["skipped"][0]["reason"].startswith("no label: every target is missing")
    assert manifest["targets"]["a"]["labelled"] == {"train": 4, "val": 0, "test": 0}
    assert manifest["targets"]["b"]["labelled"] == {"train": 3, "val": 0, "test": 0}
    records = {r["smiles"]: r["label"] for r in LazyDataset(tmp_path / "ds")}
    assert records["CCN"] == {"a": 2.0, "b": None} and records["CCC"] == {"a": None, "b": 30.0}


def test_statistics_are_over_the_labelled_training_rows(tmp_path):
    targets = prepare(tmp_path)["targets"]
    assert targets["a"]["mean"] == pytest.approx(np.mean([1, 2, 4, 5]))
    assert targets["a"]["std"] == pytest.approx(np.std([1, 2, 4, 5]))
    assert targets["b"]["mean"] == pytest.approx(30.0)
    assert targets["b"]["std"] == pytest.approx(np.std([10, 30, 50]))


def test_collate_masks_missing_labels_and_the_batch_scores_none_of_them(tmp_path):
    manifest = prepare(tmp_path)
    records = list(LazyDataset(tmp_path / "ds"))
    collated = collate_arrays(records, 0, integer_dtype=np.int32)
    order = [r["smiles"] for r in records]
    expected_b = [r["label"]["b"] is not None for r in records]
    assert collated["label_mask"]["b"].tolist() == expected_b
    assert np.isnan(collated["labels"]["b"][~np.array(expected_b)]).all()
    config = ModelConfig.from_manifest(manifest, mlm_weight=0.0)
    batch = prepare_batch(collated, config)
    assert batch["label_mask"]["a"].tolist() == [s != "CCC" for s in order]
    assert all(np.isfinite(values).all() for values in batch["labels"].values())


def test_a_nan_label_in_a_record_is_still_refused_and_none_is_missing():
    records = [{"input_ids": [1, 5, 2], "label": {"y": 1.0}}, {"input_ids": [1, 6, 2], "label": {"y": float("nan")}}]
    with pytest.raises(ValueError, match=r"record 1: label 'y' = nan is not a finite"):
        collate_arrays(records, 0, integer_dtype=np.int64)
    records[1]["label"]["y"] = None
    collated = collate_arrays(records, 0, integer_dtype=np.int64)
    assert collated["label_mask"]["y"].tolist() == [True, False]
    assert collated["labels"]["y"].dtype == np.float32  # an integer column with a hole is float, NaN there


def test_a_target_without_a_labelled_training_row_is_refused_by_name(tmp_path):
    rows = "".join(f"{'C' * (i + 1)},{i},NA\n" for i in range(6))
    with pytest.raises(
        SourceError, match=r"column 'b' has no value for any training molecule \(0 labelled in val/test"
    ):
        prepare(tmp_path, "smiles,a,b\n" + rows)


def test_shards_write_null_for_a_missing_label(tmp_path):
    prepare(tmp_path)
    lines = (tmp_path / "ds" / "shards" / "shard-00000.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["label"] == {"a": 2.0, "b": None}
    assert '"b":null' in lines[1]
