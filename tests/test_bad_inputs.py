"""The bad-input catalogue (issue 14): every way a user or a crash has fed us something wrong, one row each.

Each row says how to provoke the case, what must happen (an exception and its message, a warning, a
command's exit code and its one-line message, or a success that handles the input right), and what
must survive: the scratch directory is snapshotted (paths, kinds, modes, contents) after the row's
setup and compared after the call, so a row that deletes, half-writes or leaves a file behind fails,
whatever it raised. ``kept`` adds row-specific checks; ``changes`` marks the rows whose job is to
change the directory (a dataset written, a leftover cleaned), checked by ``kept`` instead.

Verdicts: ``refused`` was already refused cleanly before issue 14; ``fixed-harmful`` and ``fixed-weak``
were harmful or weak (a traceback, a misleading or silent answer) and are fixed; ``open`` rows are
strict xfails, so fixing one fails the test until its verdict is updated. ``new`` marks cases found
while building the catalogue rather than listed in the issue. A failure mode found later gets a row.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import warnings
from collections.abc import Callable

import pytest

from ml_patterns.checkpoint import CheckpointError, load_checkpoint
from ml_patterns.data import DatasetError, LazyDataset
from ml_patterns.errors import DestinationError, DestinationExistsError, OptionError
from ml_patterns.io import _host
from ml_patterns.molecules.config import PrepareConfig
from ml_patterns.molecules.prepare import ConflictingLabelsWarning, read_manifest, verify_checksums
from ml_patterns.molecules.sources import MissingColumnsError, SourceError
from ml_patterns.molecules.tokenizer import SmilesTokenizer, TokenizationError, tokenize
from ml_patterns.optim import OptimizerConfig
from tests.catalogue import (
    MOLECULES,
    VERDICTS,
    Case,
    Counter,
    Scene,
    cli_info,
    dead_pid,
    diverging_run,
    edit_manifest,
    edit_state,
    entry_without_split,
    flip_byte,
    flip_optimizer_bytes,
    interrupted_prepare,
    jax_load_model,
    modes,
    nothing_unpickled,
    pickle_file,
    regression_data,
    resume_setup,
    resumer_unchanged,
    rewrite_json,
    skipped,
    small_checkpoint,
    snapshot,
    torch_load_model,
    torch_pickle,
    trainer,
    with_umask,
    write_index,
)
from tests.catalogue_round2 import WRITER_CASES
from tests.catalogue_round2_data import DATASET_CASES
from tests.catalogue_round2_reports import REPORT_CASES

CASES = [
    # -- where prepare writes (issue 14, harmful 1 and the weak output cases) -------------------
    Case(
        "prepare-overwrite-dir-holding-the-source",
        "fixed-harmful",
        lambda s: s.prepare(out="mine", csv="mine/mols.csv", overwrite=True),
        DestinationError,
        r"refusing to write to .*mine: it holds .*mine/mols\.csv, which must be kept",
        setup=lambda s: (s.file("mine/mols.csv"), s.file("mine/notes.txt", "mine")),
    ),
    Case(
        "prepare-overwrite-dir-that-is-not-a-dataset",
        "fixed-harmful",
        lambda s: s.prepare(out="mine", overwrite=True),
        DestinationError,
        r"refusing to replace .*mine: it is not a dataset written by `ml-patterns prepare`",
        setup=lambda s: (s.file("mols.csv"), s.file("mine/thesis.tex", "chapter 1")),
    ),
    Case(
        "prepare-overwrite-dataset-holding-user-files",
        "fixed-harmful",
        lambda s: s.prepare(overwrite=True),
        DestinationError,
        r"it holds 1 file\(s\) prepare did not write \(shards/my-notes\.txt\)",
        setup=lambda s: (s.file("mols.csv"), s.dataset(), s.file("ds/shards/my-notes.txt", "x")),
        new=True,
    ),
    Case(
        "prepare-out-dot",
        "fixed-weak",
        lambda s: s.prepare(out=".", overwrite=True),
        DestinationError,
        r"refusing to write to .*: it is the working directory or holds it",
        setup=lambda s: s.file("mols.csv"),
    ),
    Case(
        "prepare-out-parent-of-cwd",
        "fixed-weak",
        lambda s: (s.monkeypatch.chdir(s.root / "sub"), s.prepare(out="..", csv="sub/mols.csv", overwrite=True)),
        DestinationError,
        r"working directory or holds it",
        setup=lambda s: s.file("sub/mols.csv"),
        new=True,
    ),
    Case(
        "prepare-out-is-a-file",
        "fixed-weak",
        lambda s: s.prepare(out="afile", overwrite=True),
        DestinationError,
        r"refusing to replace .*afile: it is not a directory",
        setup=lambda s: (s.file("mols.csv"), s.file("afile", "precious")),
    ),
    Case(
        "prepare-out-unwritable",
        "fixed-weak",
        lambda s: s.prepare(out="/sys/ml-patterns-ds"),
        DestinationError,
        r"cannot create /sys/ml-patterns-ds: (Operation not permitted|Permission denied)",
        setup=lambda s: s.file("mols.csv"),
        kept=lambda s, _: not os.path.lexists("/sys/ml-patterns-ds"),
        skip="" if os.path.isdir("/sys/kernel") else "needs Linux's /sys",
    ),
    Case(
        "prepare-out-exists",
        "refused",
        lambda s: s.prepare(),
        DestinationExistsError,
        r"ds already exists \(pass overwrite=True to replace it\)",
        setup=lambda s: (s.file("mols.csv"), s.dataset()),
    ),
    Case(
        "prepare-out-exists-cli-says-the-flag",
        "fixed-weak",
        lambda s: s.cli("prepare", "--out", "ds", "--csv", "mols.csv", "--target-cols", "y", "--quiet"),
        2,
        r"ds already exists \(pass --overwrite to replace it\)",
        setup=lambda s: (s.file("mols.csv"), s.dataset()),
    ),
    Case(
        "prepare-interrupted",
        "refused",
        interrupted_prepare,
        KeyboardInterrupt,
        "^$",
        setup=lambda s: s.file("mols.csv"),
    ),
    Case(
        "prepare-cleans-staging-of-killed-runs",
        "fixed-weak",
        lambda s: s.prepare(),
        None,
        setup=lambda s: (s.file("mols.csv"), s.file(f".ds.{_host()}.{dead_pid()}-0badc0de.partial/index.json", "[")),
        changes=True,
        kept=lambda s, _: sorted(os.listdir(s.root)) == ["ds", "mols.csv"],
    ),
    Case(
        "prepare-reports-an-orphaned-old-copy",
        "fixed-weak",
        lambda s: s.prepare(),
        UserWarning,
        r"\.ds\.\d+\.old holds the previous ds from an interrupted replacement; rename it",
        setup=lambda s: (s.file("mols.csv"), s.file(f".ds.{dead_pid()}.old/manifest.json", "{}")),
        changes=True,
        kept=lambda s, _: len(os.listdir(s.root)) == 3,
        new=True,
    ),
    # -- the source table -----------------------------------------------------------------------
    Case(
        "csv-utf8-bom",
        "fixed-weak",
        lambda s: s.prepare(),
        None,
        setup=lambda s: s.file("mols.csv", b"\xef\xbb\xbf" + MOLECULES.encode()),
        changes=True,
        kept=lambda s, manifest: manifest["counts"]["molecules"] == 3,
    ),
    Case(
        "csv-1mb-smiles-field",
        "fixed-weak",
        lambda s: s.prepare(),
        None,
        setup=lambda s: s.file("mols.csv", MOLECULES + "C" * 1_000_000 + ",4\n"),
        changes=True,
        kept=lambda s, manifest: (
            skipped(manifest) == [(5, "SMILES of 1000000 characters, over 10000 (an unbalanced quote?)")]
        ),
    ),
    Case(
        "csv-not-utf8",
        "fixed-weak",
        lambda s: s.prepare(),
        SourceError,
        r"mols\.csv, line 4: byte 0xff at column 3 is not UTF-8; save the file as UTF-8",
        setup=lambda s: s.file("mols.csv", b"smiles,y\nCCO,1\nCCN,2\nCC\xffC,3\n"),
    ),
    Case(
        "csv-quoted-newline-keeps-true-lines",
        "fixed-weak",
        lambda s: s.prepare(),
        None,
        setup=lambda s: s.file("mols.csv", 'smiles,y,note\nCCO,1,"a\nb\nc"\nCCN,2,x\nnot-a-smiles,3,x\n'),
        changes=True,
        kept=lambda s, manifest: skipped(manifest) == [(6, "RDKit cannot parse this SMILES")],
    ),
    Case(
        "csv-duplicates-with-conflicting-labels",
        "fixed-weak",
        lambda s: s.prepare(),
        ConflictingLabelsWarning,
        r"1 row\(s\) repeat a molecule with different labels \(first: line 5 vs line 2",
        setup=lambda s: s.file("mols.csv", MOLECULES + "OCC,9\n"),
        changes=True,
    ),
    Case(
        "csv-wrong-number-of-fields",
        "fixed-weak",
        lambda s: s.prepare(),
        None,
        setup=lambda s: s.file("mols.csv", "y,smiles\n1,CCO\n2\n3,CCN,x\n5,CCCC\n"),
        changes=True,
        new=True,
        kept=lambda s, manifest: (
            skipped(manifest) == [(3, "1 fields where the header has 2"), (4, "3 fields where the header has 2")]
        ),
    ),
    Case(
        "csv-missing-column",
        "refused",
        lambda s: s.prepare(target_cols=["logP"]),
        MissingColumnsError,
        r"column\(s\) \['logP'\] not in the header \['smiles', 'y'\]",
        setup=lambda s: s.file("mols.csv"),
    ),
    Case(
        "csv-no-usable-molecule",
        "refused",
        lambda s: s.prepare(),
        SourceError,
        r"no usable molecule in .*mols\.csv \(2 rows skipped\)",
        setup=lambda s: s.file("mols.csv", "smiles,y\nnot-a-smiles,1\nCCO,abc\n"),
    ),
    Case(
        "csv-bad-labels-are-skipped-with-reasons",
        "refused",
        lambda s: s.prepare(),
        None,
        setup=lambda s: s.file("mols.csv", MOLECULES + "CCCC,abc\nCCCCC,nan\nC1CC,1\n"),
        changes=True,
        kept=lambda s, manifest: (
            skipped(manifest)
            == [
                (5, "target 'y' is not a number: 'abc'"),
                (6, "no label: every target is missing ('y': 'nan')"),
                (7, "RDKit cannot parse this SMILES"),
            ]
        ),
    ),
    Case(
        "csv-missing-file",
        "refused",
        lambda s: s.prepare(csv="nope.csv"),
        OptionError,
        r"csv_path: .*nope\.csv: no such file",
    ),
    Case(
        "csv-is-a-directory",
        "fixed-weak",
        lambda s: s.prepare(csv="folder"),
        OptionError,
        r"csv_path: .*folder is not a regular file",
        setup=lambda s: s.file("folder/x.csv"),
        new=True,
    ),
    Case(
        "csv-is-a-fifo",
        "fixed-harmful",
        lambda s: s.prepare(csv="pipe"),
        OptionError,
        r"csv_path: .*pipe is not a regular file \(a directory, FIFO or device\)",
        setup=lambda s: os.mkfifo(s.root / "pipe"),
        new=True,
    ),
    Case(
        "csv-without-target-columns",
        "refused",
        lambda s: s.prepare(target_cols=[]),
        OptionError,
        r"target_cols must name at least one label column",
        setup=lambda s: s.file("mols.csv"),
    ),
    Case(
        "prepare-seed-negative",
        "fixed-weak",
        lambda s: s.prepare(config=PrepareConfig(seed=-1)),
        OptionError,
        r"seed must be an integer >= 0, got -1",
        setup=lambda s: s.file("mols.csv"),
        kept=lambda s, _: OptionError("seed", "{option} x").cli_message == "--seed x",
    ),
    Case(
        "prepare-rdkit-property-unknown",
        "fixed-weak",
        lambda s: s.prepare(config=PrepareConfig(rdkit_properties=("Bogus",))),
        OptionError,
        r"rdkit_properties names unknown RDKit properties \['Bogus'\]; known: MolLogP, MolWt",
        setup=lambda s: s.file("mols.csv"),
    ),
    Case(
        "prepare-rdkit-property-is-a-source-column",
        "refused",
        lambda s: s.prepare(csv=None, config=PrepareConfig(rdkit_properties=("TPSA",))),
        OptionError,
        r"rdkit_properties \['TPSA'\] are also source columns",
    ),
    Case(
        "prepare-split-fractions",
        "refused",
        lambda s: PrepareConfig(val_fraction=0.6, test_fraction=0.5),
        ValueError,
        r"val_fraction \+ test_fraction must leave some molecules for training",
    ),
    Case(
        "cli-seed-negative-names-the-flag",
        "fixed-weak",
        lambda s: s.cli("prepare", "--out", "ds", "--csv", "mols.csv", "--target-cols", "y", "--seed", "-1"),
        2,
        r"error: argument --seed: must be 0 or more, got -1$",
        setup=lambda s: s.file("mols.csv"),
        usage=True,
    ),
    Case(
        "cli-rdkit-property-unknown-names-the-flag",
        "fixed-weak",
        lambda s: s.cli("prepare", "--out", "ds", "--rdkit-properties", "Bogus"),
        2,
        r"error: argument --rdkit-properties: unknown RDKit propert\(y/ies\) \['Bogus'\]",
        usage=True,
    ),
    Case(
        "cli-csv-without-target-cols",
        "refused",
        lambda s: s.cli("prepare", "--out", "ds", "--csv", "mols.csv"),
        2,
        r"^ml-patterns prepare: error: --csv needs --target-cols",
        setup=lambda s: s.file("mols.csv"),
    ),
    # -- a prepared dataset: manifest, index, checksums -----------------------------------------
    Case(
        "index-entry-without-split",
        "fixed-weak",
        lambda s: verify_checksums(s.root / "ds"),
        DatasetError,
        r"ds/index\.json: entry 3 has 'split' None, not one of \('train', 'val', 'test'\)",
        setup=lambda s: (s.dataset(), rewrite_json(s.root / "ds" / "index.json", entry_without_split, rechecksum=True)),
    ),
    Case(
        "index-entry-without-split-is-a-checksum-mismatch",
        "refused",
        lambda s: verify_checksums(s.root / "ds"),
        None,
        setup=lambda s: (s.dataset(), rewrite_json(s.root / "ds" / "index.json", entry_without_split)),
        kept=lambda s, bad: bad == ["index.json"],
    ),
    Case(
        "manifest-bad-types",
        "fixed-weak",
        lambda s: read_manifest(s.root / "ds"),
        DatasetError,
        r"ds/manifest\.json: 'counts\.molecules' must be an integer, got 'many'",
        setup=lambda s: (s.dataset(), edit_manifest(s, lambda m: m["counts"].update(molecules="many"))),
    ),
    Case(
        "manifest-bad-types-cli",
        "fixed-weak",
        cli_info,
        2,
        r"^ml-patterns info: error: .*'sequence_length' must be an object, got \[\]$",
        setup=lambda s: (s.dataset(), edit_manifest(s, lambda m: m.update(sequence_length=[]))),
    ),
    Case(
        "manifest-without-checksums",
        "fixed-weak",
        lambda s: verify_checksums(s.root / "ds"),
        DatasetError,
        r"ds/manifest\.json: key 'checksums' is missing",
        setup=lambda s: (s.dataset(), edit_manifest(s, lambda m: m.pop("checksums"))),
    ),
    Case(
        "manifest-empty-checksums",
        "fixed-weak",
        lambda s: verify_checksums(s.root / "ds"),
        DatasetError,
        r"'checksums' is empty, nothing can be verified",
        setup=lambda s: (s.dataset(), edit_manifest(s, lambda m: m.update(checksums={}))),
    ),
    Case(
        "manifest-checksum-not-a-digest",
        "fixed-weak",
        lambda s: verify_checksums(s.root / "ds"),
        DatasetError,
        r"'checksums\.vocab\.json' must be a sha256 hex digest, got 42",
        new=True,
        setup=lambda s: (s.dataset(), edit_manifest(s, lambda m: m["checksums"].update({"vocab.json": 42}))),
    ),
    Case(
        "manifest-drops-a-shard-checksum",
        "fixed-weak",
        lambda s: verify_checksums(s.root / "ds"),
        DatasetError,
        r"index\.json: entry 0 has 'file' 'shards/shard-00000\.jsonl', which has no checksum",
        new=True,
        setup=lambda s: (s.dataset(), edit_manifest(s, lambda m: m["checksums"].pop("shards/shard-00000.jsonl"))),
    ),
    Case(
        "manifest-not-json",
        "refused",
        lambda s: read_manifest(s.root / "ds"),
        DatasetError,
        r"manifest\.json is not valid JSON",
        setup=lambda s: (s.dataset(), s.file("ds/manifest.json", "{")),
    ),
    Case(
        "manifest-not-an-object",
        "fixed-weak",
        lambda s: read_manifest(s.root / "ds"),
        DatasetError,
        r"manifest\.json must hold a JSON object, got list",
        new=True,
        setup=lambda s: (s.dataset(), s.file("ds/manifest.json", "[]")),
    ),
    Case(
        "info-on-a-directory-that-is-not-a-dataset",
        "refused",
        lambda s: s.cli("info", str(s.root)),
        2,
        r"manifest\.json not found: .* is not a prepared dataset",
    ),
    Case(
        "info-verify-tampered-shard",
        "refused",
        lambda s: s.cli("info", str(s.root / "ds"), "--verify"),
        1,
        r"checksum mismatch in 1 file\(s\): shards/shard-00001\.jsonl",
        setup=lambda s: (s.dataset(), flip_byte(s.root / "ds" / "shards" / "shard-00001.jsonl", 10)),
    ),
    Case(
        "info-verify-missing-shard",
        "refused",
        lambda s: s.cli("info", str(s.root / "ds"), "--verify"),
        1,
        r"checksum mismatch in 1 file\(s\): shards/shard-00002\.jsonl",
        setup=lambda s: (s.dataset(), os.unlink(s.root / "ds" / "shards" / "shard-00002.jsonl")),
    ),
    # -- reading a dataset (LazyDataset) --------------------------------------------------------
    Case(
        "dataset-path-traversal",
        "refused",
        lambda s: LazyDataset(s.root / "ds")[0],
        DatasetError,
        r"entry 0 .*escapes",
        setup=lambda s: (s.dataset(), write_index(s, [{"file": "../../etc/passwd", "row": 0}])),
    ),
    Case(
        "dataset-absolute-path",
        "refused",
        lambda s: LazyDataset(s.root / "ds")[0],
        DatasetError,
        r"entry 0 .*escapes",
        setup=lambda s: (s.dataset(), write_index(s, [{"file": "/etc/passwd", "row": 0}])),
    ),
    Case(
        "dataset-symlink-out-of-the-root",
        "refused",
        lambda s: LazyDataset(s.root / "ds")[0],
        DatasetError,
        r"entry 0 .*outside",
        setup=lambda s: (
            s.dataset(),
            s.file("outside.jsonl", '{"input_ids": [2, 3], "label": 0.0, "smiles": ""}\n'),
            (s.root / "ds" / "shards" / "link.jsonl").symlink_to(s.root / "outside.jsonl"),
            write_index(s, [{"file": "shards/link.jsonl", "row": 0}]),
        ),
    ),
    Case(
        "dataset-row-out-of-range",
        "refused",
        lambda s: LazyDataset(s.root / "ds")[0],
        DatasetError,
        r"entry 0: row 100000 out of range",
        setup=lambda s: (s.dataset(), write_index(s, [{"file": "shards/shard-00000.jsonl", "row": 100_000}])),
    ),
    Case(
        "dataset-corrupt-record",
        "refused",
        lambda s: LazyDataset(s.root / "ds")[0],
        DatasetError,
        r"entry 0: row 0 of shard .*shard-00000\.jsonl is not valid JSON",
        setup=lambda s: (s.dataset(), s.file("ds/shards/shard-00000.jsonl", '{"smiles": "CC", "input_ids": [2,\n')),
    ),
    Case(
        "dataset-missing-shard",
        "refused",
        lambda s: LazyDataset(s.root / "ds")[0],
        FileNotFoundError,
        r"shards/shard-00000\.jsonl \(needed by entry 0\) does not exist",
        setup=lambda s: (s.dataset(), os.unlink(s.root / "ds" / "shards" / "shard-00000.jsonl")),
    ),
    Case(
        "dataset-index-missing",
        "refused",
        lambda s: LazyDataset(s.root),
        FileNotFoundError,
        r"index\.json not found: is .* a dataset \(an index\.json listing its files\)\?",
    ),
    Case(
        "dataset-index-not-a-list",
        "refused",
        lambda s: LazyDataset(s.root / "ds"),
        DatasetError,
        r"index\.json must hold a JSON list of entries, got dict",
        setup=lambda s: (s.dataset(), s.file("ds/index.json", '{"file": "x"}')),
    ),
    Case(
        "dataset-entry-without-split",
        "fixed-weak",
        lambda s: LazyDataset(s.root / "ds", split="train"),
        DatasetError,
        r"ds/index\.json: entry 3 has no 'split' \(1 such entries\), so split='train' cannot tell where they belong",
        setup=lambda s: (s.dataset(), rewrite_json(s.root / "ds" / "index.json", entry_without_split)),
    ),
    Case(
        "dataset-shard-is-a-fifo",
        "fixed-harmful",
        lambda s: LazyDataset(s.root / "ds")[0],
        DatasetError,
        r"entry 0: .*shards/shard-00000\.jsonl is a FIFO, not a regular file",
        setup=lambda s: (
            s.dataset(),
            os.unlink(s.root / "ds" / "shards" / "shard-00000.jsonl"),
            os.mkfifo(s.root / "ds" / "shards" / "shard-00000.jsonl"),
        ),
    ),
    Case(
        "dataset-shard-is-a-directory",
        "fixed-weak",
        lambda s: LazyDataset(s.root / "ds")[0],
        DatasetError,
        r"shards/shard-00000\.jsonl is a directory, not a regular file",
        new=True,
        setup=lambda s: (
            s.dataset(),
            os.unlink(s.root / "ds" / "shards" / "shard-00000.jsonl"),
            (s.root / "ds" / "shards" / "shard-00000.jsonl").mkdir(),
        ),
    ),
    Case(
        "dataset-unknown-split",
        "refused",
        lambda s: LazyDataset(s.root / "ds", split="training"),
        DatasetError,
        r"no entry has split 'training'; splits present: \['test', 'train', 'val'\]",
        setup=lambda s: s.dataset(),
    ),
    Case(
        "dataset-negative-index",
        "refused",
        lambda s: LazyDataset(s.root / "ds")[-1],
        IndexError,
        r"index -1 out of range for dataset",
        setup=lambda s: s.dataset(),
    ),
    # -- model checkpoints --------------------------------------------------------------------
    Case(
        "checkpoint-truncated",
        "refused",
        lambda s: load_checkpoint(s.root / "model.safetensors"),
        CheckpointError,
        r"model\.safetensors: truncated",
        setup=lambda s: (
            small_checkpoint(s),
            s.file("model.safetensors", (s.root / "model.safetensors").read_bytes()[:-1]),
        ),
    ),
    Case(
        "checkpoint-flipped-byte",
        "refused",
        lambda s: load_checkpoint(s.root / "model.safetensors"),
        CheckpointError,
        r"tensor data does not match the checksum written with it",
        setup=lambda s: flip_byte(small_checkpoint(s)),
    ),
    *(
        Case(
            f"checkpoint-pickle-{side}",
            "refused",
            lambda s, load=load: load(s.root / "model.safetensors"),
            CheckpointError,
            r"model\.safetensors: this is a pickle \(a legacy PyTorch torch\.save file\?\), not safetensors",
            setup=pickle_file,
            kept=nothing_unpickled,
        )
        for side, load in (("core", load_checkpoint), ("torch", torch_load_model), ("jax", jax_load_model))
    ),
    Case(
        "checkpoint-torch-save-of-a-malicious-object",
        "refused",
        lambda s: __import__("torch_impl.state").state.read_weights(s.root / "model.pt"),
        CheckpointError,
        r"model\.pt: a PyTorch file that torch\.load\(weights_only=True\) cannot read",
        setup=torch_pickle,
        kept=nothing_unpickled,
    ),
    Case(
        "checkpoint-torch-file-given-to-jax",
        "refused",
        lambda s: jax_load_model(s.root / "model.pt"),
        CheckpointError,
        r"model\.pt: this is a PyTorch torch\.save file, not safetensors; convert it",
        setup=torch_pickle,
        kept=nothing_unpickled,
    ),
    Case(
        "checkpoint-missing",
        "refused",
        lambda s: load_checkpoint(s.root / "model.safetensors"),
        FileNotFoundError,
        r"model\.safetensors",
    ),
    # -- optimizer settings (issue 14, weak: NaN learning rate accepted) -----------------------
    Case(
        "optimizer-lr-nan",
        "fixed-weak",
        lambda s: OptimizerConfig("adam", learning_rate=float("nan")),
        ValueError,
        r"learning_rate must be a finite number in \(0, inf\), got nan",
    ),
    Case(
        "optimizer-lr-inf",
        "fixed-weak",
        lambda s: OptimizerConfig("sgd", learning_rate=float("inf")),
        ValueError,
        r"learning_rate must be a finite number in \(0, inf\), got inf",
        new=True,
    ),
    Case(
        "optimizer-eps-zero",
        "fixed-weak",
        lambda s: OptimizerConfig("adam", eps=0.0),
        ValueError,
        r"eps must be a finite number in \(0, inf\), got 0\.0",
        new=True,
    ),
    Case(
        "optimizer-beta-one",
        "fixed-weak",
        lambda s: OptimizerConfig("adam", betas=(0.9, 1.0)),
        ValueError,
        r"betas\[1\] must be a finite number in \[0, 1\), got 1\.0",
        new=True,
    ),
    Case(
        "optimizer-negative-weight-decay",
        "fixed-weak",
        lambda s: OptimizerConfig("adamw", weight_decay=-0.1),
        ValueError,
        r"weight_decay must be a finite number in \[0, inf\), got -0\.1",
        new=True,
    ),
    # -- file modes (issue 14, weak: 0600/0700 outputs) -----------------------------------------
    Case(
        "dataset-written-with-umask-022",
        "fixed-weak",
        lambda s: with_umask(0o022, s.prepare),
        None,
        setup=lambda s: s.file("mols.csv"),
        changes=True,
        kept=lambda s, _: modes(s.root / "ds") == {("dir", 0o755), ("file", 0o644)},
    ),
    Case(
        "dataset-written-with-umask-002",
        "fixed-weak",
        lambda s: with_umask(0o002, s.prepare),
        None,
        setup=lambda s: s.file("mols.csv"),
        changes=True,
        kept=lambda s, _: modes(s.root / "ds") == {("dir", 0o775), ("file", 0o664)},
    ),
    Case(
        "checkpoint-written-with-umask-022",
        "fixed-weak",
        lambda s: with_umask(0o022, lambda: small_checkpoint(s)),
        None,
        changes=True,
        kept=lambda s, path: stat.S_IMODE(os.stat(path).st_mode) == 0o644,
    ),
    # -- the tokenizer and its vocabulary -----------------------------------------------------
    *(
        Case(
            f"vocab-{name}",
            "refused",
            lambda s: SmilesTokenizer.load(s.root / "vocab.json"),
            ValueError,
            message,
            setup=lambda s, content=content: s.file("vocab.json", content),
        )
        for name, content, message in (
            ("not-json", "{", r"vocabulary file .*vocab\.json is not a valid vocabulary"),
            ("tokens-not-strings", '{"tokens": [1, 2]}', r"vocab\.json: 'tokens' must be a list of strings"),
            ("without-special-tokens", '{"tokens": ["C", "O"]}', r"vocabulary must start with the special tokens"),
        )
    ),
    Case(
        "smiles-with-a-foreign-character",
        "refused",
        lambda s: tokenize("CC\u20acO"),
        TokenizationError,
        r"character '\u20ac' at position 2 is not part of any SMILES token",
    ),
    Case(
        "decode-id-outside-the-vocabulary",
        "refused",
        lambda s: SmilesTokenizer.build(["CCO"]).decode([2, 99]),
        ValueError,
        r"token id 99 is outside the vocabulary \[0, 7\)",
    ),
]


# -- the command line: flags checked before any work, one line per error, signals, pipes ------
def signalled_prepare(signum: int) -> Callable[[Scene], tuple[int, str]]:
    """``ml-patterns prepare`` that receives ``signum`` while it writes the dataset."""

    def provoke(scene: Scene) -> tuple[int, str]:
        import ml_patterns.molecules.prepare as prepare_module

        real_manifest = prepare_module._manifest

        def signalled(*args, **kwargs):
            # raise_signal delivers to this thread before it returns; os.kill(getpid()) may pick any
            # thread of the process (XLA's, torch's), whose handler can run after the command ended.
            signal.raise_signal(signum)
            return real_manifest(*args, **kwargs)

        scene.monkeypatch.setattr(prepare_module, "_manifest", signalled)
        # As a command's process starts, SIGINT meets Python's own handler. In this test process an
        # earlier test's library may have left it ignored (seen in full runs), which a command rightly
        # respects: an inherited SIG_IGN is a background job's.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            argv = ("prepare", "--out", "ds", "--csv", "mols.csv", "--target-cols", "y", "--quiet", *HOLD_NONE_OUT)
            return scene.cli(*argv)
        finally:
            signal.signal(signal.SIGINT, previous)

    return provoke


# The catalogue's CSVs hold a few molecules: too few to hold any out (prepare refuses val/test
# splits under 10 molecules), so the CLI rows that must get past the split ask for none.
HOLD_NONE_OUT = ("--val-fraction", "0", "--test-fraction", "0")


def warned_prepare(scene: Scene) -> tuple[int, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # as outside pytest, where warnings are not errors
        return scene.cli("prepare", "--out", "ds", "--csv", "mols.csv", "--target-cols", "y", "--quiet", *HOLD_NONE_OUT)


def info_into_a_closed_pipe(scene: Scene) -> subprocess.CompletedProcess:
    """``ml-patterns info --json DIR | head -0``: the reader is gone before the command writes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "ml_patterns_app.cli", "info", "--json", str(scene.root / "ds")]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    child.stdout.close()
    with child.stderr:
        err = child.stderr.read().decode()
    return subprocess.CompletedProcess(command, child.wait(), None, err)


def compare(*argv: str) -> Callable[[Scene], tuple[int, str]]:
    return lambda scene: scene.cli("compare", *argv)


CLI_CASES = [
    Case(
        "cli-prepare-overwrite-dir-holding-the-source",
        "fixed-harmful",
        lambda s: s.cli("prepare", "--csv", "mine/mols.csv", "--target-cols", "y", "--out", "mine", "--overwrite"),
        2,
        r"^ml-patterns prepare: error: refusing to write to mine: it holds mine/mols\.csv, which must be kept$",
        setup=lambda s: (s.file("mine/mols.csv"), s.file("mine/notes.txt", "mine")),
    ),
    Case(
        "cli-prepare-out-dot",
        "fixed-weak",
        lambda s: s.cli("prepare", "--csv", "mols.csv", "--target-cols", "y", "--out", ".", "--overwrite"),
        2,
        r"^ml-patterns prepare: error: refusing to write to \.: it is the working directory",
        setup=lambda s: s.file("mols.csv"),
    ),
    Case(
        "cli-prepare-out-is-a-file",
        "fixed-weak",
        lambda s: s.cli("prepare", "--csv", "mols.csv", "--target-cols", "y", "--out", "afile", "--overwrite"),
        2,
        r"^ml-patterns prepare: error: refusing to replace afile: it is not a directory",
        setup=lambda s: (s.file("mols.csv"), s.file("afile", "precious")),
    ),
    Case(
        "cli-prepare-out-unwritable",
        "fixed-weak",
        lambda s: s.cli(
            "prepare", "--csv", "mols.csv", "--target-cols", "y", "--out", "/sys/ml-patterns-ds", "--quiet"
        ),
        2,
        r"^ml-patterns prepare: error: cannot create /sys/ml-patterns-ds: ",
        setup=lambda s: s.file("mols.csv"),
        skip="" if os.path.isdir("/sys/kernel") else "needs Linux's /sys",
    ),
    Case(
        "cli-prepare-csv-not-utf8",
        "fixed-weak",
        lambda s: s.cli("prepare", "--csv", "mols.csv", "--target-cols", "y", "--out", "ds", "--quiet"),
        2,
        r"^ml-patterns prepare: error: mols\.csv, line 3: byte 0xff at column 2 is not UTF-8",
        setup=lambda s: s.file("mols.csv", b"smiles,y\nCCO,1\nC\xff,2\n"),
    ),
    Case(
        "cli-prepare-csv-missing-column",
        "fixed-weak",
        lambda s: s.cli("prepare", "--csv", "mols.csv", "--target-cols", "logP", "--out", "ds", "--quiet"),
        2,
        r"^ml-patterns prepare: error: mols\.csv: column\(s\) \['logP'\] not in the header \['smiles', 'y'\]$",
        setup=lambda s: s.file("mols.csv"),
        new=True,
    ),
    Case(
        "cli-prepare-warning-is-one-line",
        "fixed-weak",
        warned_prepare,
        0,
        r"^ml-patterns prepare: warning: mols\.csv: 1 row\(s\) repeat a molecule with different labels",
        setup=lambda s: s.file("mols.csv", MOLECULES + "OCC,9\n"),
        changes=True,
        kept=lambda s, _: (s.root / "ds" / "manifest.json").is_file(),
        new=True,
    ),
    Case(
        "cli-prepare-sigterm",
        "fixed-weak",
        signalled_prepare(signal.SIGTERM),
        143,
        r"^ml-patterns prepare: terminated$",
        setup=lambda s: s.file("mols.csv"),
    ),
    Case(
        "cli-prepare-sigint",
        "fixed-weak",
        signalled_prepare(signal.SIGINT),
        130,
        r"^ml-patterns prepare: interrupted$",
        setup=lambda s: s.file("mols.csv"),
    ),
    Case(
        "cli-info-into-a-closed-pipe",
        "fixed-weak",
        info_into_a_closed_pipe,
        None,
        setup=lambda s: s.dataset(),
        kept=lambda s, run: run.returncode == 141 and run.stderr == "",
    ),
    Case(
        "cli-compare-data-typo",
        "fixed-harmful",
        compare("--data", "typo_ds"),
        2,
        r"^ml-patterns compare: error: --data typo_ds does not exist; to use your own molecules, prepare them "
        r"there with `ml-patterns prepare --csv FILE --target-cols COLUMNS --out typo_ds`, or leave --data out",
    ),
    Case(
        "cli-compare-data-is-a-csv",
        "fixed-weak",
        compare("--data", "mols.csv"),
        2,
        r"^ml-patterns compare: error: --data mols\.csv is a file; --data takes a dataset folder made by "
        r"`ml-patterns prepare`: run `ml-patterns prepare --csv mols\.csv --target-cols COLUMNS --out data/mols`, "
        r"then pass --data data/mols$",
        setup=lambda s: s.file("mols.csv"),
        new=True,
    ),
    Case(
        "cli-compare-data-not-a-dataset",
        "fixed-weak",
        compare("--data", "notes"),
        2,
        r"^ml-patterns compare: error: --data notes is not a prepared dataset \(it has no manifest\.json\)",
        setup=lambda s: s.file("notes/todo.txt", "x"),
    ),
    Case(
        "cli-compare-batch-size-zero",
        "fixed-weak",
        compare("--batch-size", "0"),
        2,
        r"error: argument --batch-size: must be at least 1, got 0$",
        usage=True,
    ),
    Case(
        "cli-compare-epochs-negative",
        "fixed-weak",
        compare("--epochs", "-1"),
        2,
        r"error: argument --epochs: must be at least 1, got -1$",
        usage=True,
    ),
    Case(
        "cli-bench-data-typo",
        "fixed-harmful",
        lambda s: s.cli("bench", "--quick", "--data", "typo_ds"),
        2,
        r"^ml-patterns bench: error: --data typo_ds does not exist",
        new=True,
    ),
    Case(
        "cli-parity-seed-negative",
        "fixed-weak",
        lambda s: s.cli("parity", "--seed", "-1"),
        2,
        r"error: argument --seed: must be 0 or more, got -1$",
        usage=True,
        new=True,
    ),
]

CASES += CLI_CASES


def training_cases(backend: str) -> list[Case]:
    def load(scene: Scene) -> None:
        scene.resumer.load_checkpoint(scene.root / "ckpt")

    return [
        Case(
            f"training-checkpoint-corrupt-optimizer-{backend}",
            "fixed-harmful",
            load,
            CheckpointError,
            r"ckpt/optimizer\.safetensors does not match its checksum in checksums\.json",
            setup=resume_setup(backend, flip_optimizer_bytes),
            kept=resumer_unchanged,
        ),
        Case(
            f"training-checkpoint-edited-state-{backend}",
            "fixed-weak",
            load,
            CheckpointError,
            r"ckpt/trainer_state\.json does not match its checksum",
            new=True,
            setup=resume_setup(backend, edit_state(lambda state: state.update(epoch=5), checksum=False)),
            kept=resumer_unchanged,
        ),
        Case(
            f"trainer-state-epoch-not-a-number-{backend}",
            "fixed-weak",
            load,
            CheckpointError,
            r"ckpt/trainer_state\.json: 'epoch' must be an integer >= 0, got 'one'",
            setup=resume_setup(backend, edit_state(lambda state: state.update(epoch="one"), checksum=True)),
            kept=resumer_unchanged,
        ),
        Case(
            f"trainer-state-history-ragged-{backend}",
            "fixed-weak",
            load,
            CheckpointError,
            r"trainer_state\.json: 'history' must be lists of one length",
            new=True,
            setup=resume_setup(backend, edit_state(lambda state: state["history"]["epoch"].append(7), checksum=True)),
            kept=resumer_unchanged,
        ),
        Case(
            f"load-with-other-callbacks-changes-nothing-{backend}",
            "fixed-weak",
            load,
            ValueError,
            r"ckpt: it holds the state of callback\(s\) Counter#2, which this trainer lacks",
            setup=resume_setup(backend, saved_callbacks=(Counter(), Counter()), callbacks=(Counter(),)),
            kept=resumer_unchanged,
        ),
        Case(
            f"load-failing-while-applying-is-undone-{backend}",
            "fixed-weak",
            load,
            RuntimeError,
            r"this callback cannot take the saved state",
            new=True,
            setup=resume_setup(backend, saved_callbacks=(Counter(),), callbacks=(Counter(fail=True),)),
            kept=resumer_unchanged,
        ),
        Case(
            f"training-diverges-and-stops-{backend}",
            "fixed-weak",
            lambda s: diverging_run(backend),
            None,
            kept=lambda s, run: len(run.history) < 6 and "is not finite" in run.stop_reason,
        ),
        Case(
            f"training-empty-val-loader-{backend}",
            "fixed-weak",
            lambda s: trainer(backend, 0).fit(regression_data(), [], num_epochs=1),
            ValueError,
            r"the evaluation loader yielded no batch",
        ),
        Case(
            f"training-checkpoint-incomplete-{backend}",
            "refused",
            load,
            CheckpointError,
            r"training checkpoint .*ckpt is incomplete: \['optimizer\.safetensors'\] missing",
            setup=resume_setup(backend, lambda path: os.unlink(path / "optimizer.safetensors")),
            kept=resumer_unchanged,
        ),
    ]


CASES += training_cases("torch") + training_cases("jax")
CASES += WRITER_CASES + DATASET_CASES + REPORT_CASES  # round 2 (issue 22)


def _param(case: Case):
    marks = []
    if case.verdict == "open":
        marks.append(pytest.mark.xfail(strict=True, reason="open: see the row's message for the wanted behaviour"))
    if case.skip:
        marks.append(pytest.mark.skip(reason=case.skip))
    return pytest.param(case, id=case.id, marks=marks)


@pytest.fixture
def scene(tmp_path, default_dataset, monkeypatch, capsys):
    root = tmp_path / "scene"
    root.mkdir()
    monkeypatch.chdir(root)
    return Scene(root, default_dataset[0], monkeypatch, capsys)


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_bad_input(case: Case, scene: Scene):
    case.setup(scene)
    before = snapshot(scene.root)
    result = None
    if isinstance(case.expect, int):
        code, err = case.provoke(scene)
        assert code == case.expect, err
        lines = err.strip().splitlines()
        assert lines and re.search(case.message, lines[-1]), err
        assert "Traceback" not in err and (case.usage or len(lines) == 1), err
    elif case.expect is None:
        result = case.provoke(scene)
    else:
        expecting = pytest.warns if issubclass(case.expect, Warning) else pytest.raises
        with expecting(case.expect, match=case.message):
            result = case.provoke(scene)
    if not case.changes:
        assert snapshot(scene.root) == before, "the call changed the scene"
    if case.kept is not None:
        assert case.kept(scene, result) is not False, "a row-specific check failed"


def test_the_catalogue_is_well_formed():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), "case ids repeat"
    assert {case.verdict for case in CASES} <= set(VERDICTS)
    # Only a row that must succeed may go without a message, and a successful row that changes the
    # scene must say what it must have done.
    assert all(case.message or case.expect is None for case in CASES)
    assert all(case.kept is not None for case in CASES if case.changes and case.expect is None)


def verdict_counts() -> dict[str, int]:
    """Rows per verdict, for release notes:
    ``python -c "import tests.test_bad_inputs as t; print(t.verdict_counts())"``."""
    return {verdict: sum(case.verdict == verdict for case in CASES) for verdict in VERDICTS}
