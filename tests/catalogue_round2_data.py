"""The bad-input catalogue, round 2 (issue 22), prepared datasets: the manifest's own checksum, label
columns (one value, names with dots), a dataset replaced under a live reader, data printed escaped,
a full disk while preparing. Rows as in tests/catalogue_round2.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ml_patterns.data import DatasetError, LazyDataset
from ml_patterns.errors import DestinationError
from ml_patterns.molecules.sources import SourceError
from tests.catalogue import Case, Scene, edit_manifest
from tests.catalogue_round2 import BACKENDS, disk_full

SOLUBILITY = "smiles,log.S\nCCO,1.5\nCCN,2\nCCC,3\nCCCC,4\nc1ccccc1,5\nCC(=O)O,6\n"


# -- prepared datasets: the manifest, labels, live readers, printing, a full disk -----------------
def read_while_replaced(scene: Scene) -> tuple[int, int, list[int]]:
    """A live reader of ds (one shard open at a time) while ds is prepared again from other molecules:
    ``(records served, refusals, indices that served another molecule)``."""
    reader, before = scene.notes["reader"], scene.notes["before"]
    reader[0]
    scene.prepare(overwrite=True)
    served, refused, wrong = 0, 0, []
    for index in range(0, len(before), 7):
        try:
            record = reader[index]
        except DatasetError:
            refused += 1
            continue
        served += 1
        if record["smiles"] != before[index]:
            wrong.append(index)
    return served, refused, wrong


def live_reader(scene: Scene) -> None:
    scene.dataset()
    scene.file("mols.csv", "smiles,y\n" + "".join(f"{'C' * n}O,{n}\n" for n in range(1, 40)))
    everything = LazyDataset(scene.root / "ds")
    scene.notes["before"] = [record["smiles"] for record in everything]
    everything.close()
    scene.notes["reader"] = LazyDataset(scene.root / "ds", max_open_shards=1)


def per_file_items(scene: Scene, folder: str = "items") -> None:
    for i in range(20):
        scene.file(f"{folder}/item{i}.json", json.dumps({"i": i}))
    scene.file(f"{folder}/index.json", json.dumps([{"file": f"item{i}.json"} for i in range(20)]))


def root_resolutions(scene: Scene) -> int:
    """How often reading 20 per-file items resolves the dataset's root."""
    dataset = LazyDataset(scene.root / "items")
    root, calls, resolve = scene.root / "items", [], Path.resolve

    def counting(self, *args, **kwargs):
        if self == root:
            calls.append(self)
        return resolve(self, *args, **kwargs)

    scene.monkeypatch.setattr(Path, "resolve", counting)
    for i in range(len(dataset)):
        dataset[i]
    return len(calls)


def replaced_per_file_dataset(scene: Scene):
    dataset = LazyDataset(scene.root / "items")
    dataset[0]
    os.rename(scene.root / "items", scene.root / "items-old")
    per_file_items(scene)
    (scene.root / "items" / "item1.json").write_text(json.dumps({"i": "another"}))
    return dataset[1]


def info_output(scene: Scene) -> str:
    from ml_patterns_app.cli import main

    scene.capsys.readouterr()
    assert main(["info", "ds"]) == 0
    return scene.capsys.readouterr().out


def train_log_s(scene: Scene, backend: str):
    from ml_patterns.data import Subset
    from tests.test_training import IMPLS, loaders, make_trainer

    manifest = scene.prepare(target_cols=["log.S"])
    train = Subset(LazyDataset(scene.root / "ds", split="train"), range(6))
    # The column's name is under test: no dropout (its random bits double JAX's compile on a CPU).
    run = make_trainer(IMPLS[backend], manifest, dropout=0.0)
    return manifest, run.fit(loaders(IMPLS[backend], train, train)[0], num_epochs=1)


def prepare_cli_on_a_full_disk(scene: Scene) -> tuple[int, str]:
    disk_full(scene)
    # Three molecules: none held out (a val/test split under 10 molecules is refused before writing).
    hold_none_out = ("--val-fraction", "0", "--test-fraction", "0")
    return scene.cli("prepare", "--csv", "mols.csv", "--target-cols", "y", "--out", "ds", "--quiet", *hold_none_out)


def change_a_mean(manifest: dict) -> None:
    target = next(iter(manifest["targets"].values()))
    target["mean"] += 1.0


DATASET_CASES = [
    Case(
        "manifest-mean-edited-fails-verify",
        "fixed-harmful",
        lambda s: s.cli("info", "ds", "--verify"),
        1,
        r"checksum mismatch in 1 file\(s\): manifest\.json",
        setup=lambda s: (s.dataset(), edit_manifest(s, change_a_mean)),
    ),
    Case(
        "manifest-without-its-digest-is-not-verified",
        "fixed-weak",
        lambda s: s.cli("info", "ds", "--verify"),
        1,
        r"checksum mismatch in 1 file\(s\): manifest\.json",
        setup=lambda s: (s.dataset(), edit_manifest(s, lambda m: m.pop("manifest_sha256", None))),
    ),
    Case(
        "prepare-label-with-one-value",
        "fixed-weak",
        lambda s: s.prepare(),
        SourceError,
        r"mols\.csv: label column 'y' has one value \(1\) for every labelled training molecule: nothing to learn",
        setup=lambda s: s.file("mols.csv", "smiles,y\nCCO,1\nCCN,1\nCCC,1\n"),
    ),
    Case(
        "prepare-label-with-one-value-cli",
        "fixed-weak",
        lambda s: s.cli(
            "prepare",
            "--csv",
            "mols.csv",
            "--target-cols",
            "y",
            "--out",
            "ds",
            "--quiet",
            "--val-fraction",
            "0",
            "--test-fraction",
            "0",
        ),
        2,
        r"label column 'y' has one value \(1\)",
        setup=lambda s: s.file("mols.csv", "smiles,y\nCCO,1\nCCN,1\nCCC,1\n"),
    ),
    Case(
        "prepare-overwrite-with-a-constant-label-keeps-the-dataset",
        "fixed-weak",
        lambda s: s.prepare(overwrite=True),
        SourceError,
        r"label column 'y' has one value",
        setup=lambda s: (s.dataset(), s.file("mols.csv", "smiles,y\nCCO,2\nCCN,2\nCCC,2\n")),
    ),
    *[
        Case(
            f"label-column-named-log.S-trains-{backend}",
            "fixed-weak",
            lambda s, backend=backend: train_log_s(s, backend),
            None,
            setup=lambda s: s.file("mols.csv", SOLUBILITY),
            changes=True,
            kept=lambda s, result: result[0]["targets"]["log_S"]["column"] == "log.S" and len(result[1]) == 1,
        )
        for backend in BACKENDS
    ],
    Case(
        "label-columns-equal-once-dots-become-underscores",
        "fixed-weak",
        lambda s: s.prepare(target_cols=["a.b", "a_b"]),
        None,
        setup=lambda s: s.file("mols.csv", "smiles,a.b,a_b\nCCO,1,4\nCCN,2,5\nCCC,3,7\n"),
        changes=True,
        kept=lambda s, manifest: (
            list(manifest["targets"]) == ["a_b", "a_b_2"] and manifest["targets"]["a_b"]["column"] == "a.b"
        ),
    ),
    Case(
        "label-column-named-like-the-masked-token-head",
        "fixed-weak",
        lambda s: s.prepare(target_cols=["mlm"]),
        None,
        setup=lambda s: s.file("mols.csv", "smiles,mlm\nCCO,1\nCCN,2\nCCC,3\n"),
        changes=True,
        kept=lambda s, manifest: list(manifest["targets"]) == ["mlm_2"],
    ),
    Case(
        "prepare-overwrite-under-a-live-reader",
        "fixed-harmful",
        read_while_replaced,
        None,
        setup=live_reader,
        changes=True,
        kept=lambda s, result: not result[2] and result[1] > 0,
    ),
    Case(
        "per-file-dataset-replaced-under-a-live-reader",
        "fixed-harmful",
        replaced_per_file_dataset,
        DatasetError,
        r"items was replaced while being read \(prepared again\?\)",
        setup=per_file_items,
        changes=True,
    ),
    Case(
        "lazy-dataset-resolves-its-root-once",
        "fixed-weak",
        root_resolutions,
        None,
        setup=per_file_items,
        kept=lambda s, calls: calls == 0,
    ),
    Case(
        "smiles-with-a-terminal-escape-printed-escaped",
        "fixed-harmful",
        info_output,
        None,
        setup=lambda s: (s.file("mols.csv", MOLECULES_WITH_ESCAPE), s.prepare()),
        kept=lambda s, out: "\x1b" not in out and "\\x1b[2J" in out,
    ),
    Case(
        "file-name-with-a-terminal-escape-in-an-error",
        "fixed-harmful",
        lambda s: s.cli("prepare", "--csv", "m\x1b[2J.csv", "--target-cols", "y", "--out", "ds", "--quiet"),
        2,
        r"m\\x1b\[2J\.csv: no such file",  # the escape written out: a raw one does not match
    ),
    Case(
        "disk-full-while-preparing-keeps-the-dataset",
        "fixed-weak",
        lambda s: (disk_full(s), s.prepare(overwrite=True)),
        DestinationError,
        r"^disk full at .*ds.*: nothing was replaced, the previous copy is kept",
        setup=lambda s: (s.dataset(), s.file("mols.csv")),
    ),
    Case(
        "disk-full-while-preparing-cli",
        "fixed-weak",
        lambda s: prepare_cli_on_a_full_disk(s),
        2,
        r"error: disk full at .*ds",
        setup=lambda s: s.file("mols.csv"),
    ),
]

MOLECULES_WITH_ESCAPE = "smiles,y\nCCO,1\nCCN,2\nCCC,3\nC\x1b[2JC,4\n"
