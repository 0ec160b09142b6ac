"""Turns a molecule table into the lazy on-disk dataset that ``LazyDataset`` reads.

Layout written under ``DIR`` (all of it appears at once: it is built in a staging directory and
renamed into place, see ``ml_patterns.io.staged_directory``)::

    DIR/index.json         list; entry i = {"file": "shards/shard-00000.jsonl", "row": r, "split": "train"}
    DIR/shards/*.jsonl     one JSON record per line: {"smiles", "input_ids", "label"}
    DIR/vocab.json         the tokenizer's vocabulary
    DIR/manifest.json      source, counts, skipped rows, targets (mean/std on train), splits, checksums

RDKit is imported here only, and only while preparing: reading a prepared dataset needs numpy alone.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ml_patterns import __version__
from ml_patterns.molecules.config import PrepareConfig
from ml_patterns.io import atomic_write_text, sha256_file, staged_directory
from ml_patterns.molecules.tokenizer import SmilesTokenizer, TokenizationError, tokenize

SPLITS = ("train", "val", "test")
DEFAULT_SOURCE_NAME = "RDKit NCI first_5k.tpsa.csv"


def default_csv_path() -> Path:
    """The NCI set shipped inside the RDKit wheel: 5,000 SMILES with TPSA values, no header."""
    from rdkit import RDConfig

    return Path(RDConfig.RDDataDir) / "NCI" / "first_5k.tpsa.csv"


def _rdkit_descriptors() -> dict:
    from rdkit.Chem import Descriptors, rdMolDescriptors

    return {
        "MolLogP": Descriptors.MolLogP,
        "MolWt": Descriptors.MolWt,
        "NumRings": rdMolDescriptors.CalcNumRings,
        "NumHDonors": rdMolDescriptors.CalcNumHBD,
        "TPSA": rdMolDescriptors.CalcTPSA,
        "NumHAcceptors": rdMolDescriptors.CalcNumHBA,
        "NumRotatableBonds": rdMolDescriptors.CalcNumRotatableBonds,
    }


@dataclasses.dataclass(frozen=True)
class SourceRow:
    line: int  # 1-based line number in the source file, for error reports
    smiles: str
    targets: dict[str, float]


@dataclasses.dataclass(frozen=True)
class SkippedRow:
    line: int
    smiles: str
    reason: str


def read_default_rows() -> Iterator[SourceRow | SkippedRow]:
    """Rows of RDKit's NCI file: ``SMILES,TPSA`` with ``#`` comment lines and no header."""
    path = default_csv_path()
    with open(path, newline="") as handle:
        for line_number, fields in enumerate(csv.reader(handle), start=1):
            if not fields or fields[0].startswith("#"):
                continue
            yield _parse_row(line_number, fields[0], {"TPSA": fields[1] if len(fields) > 1 else ""})


def read_csv_rows(path: Path, smiles_col: str, target_cols: list[str]) -> Iterator[SourceRow | SkippedRow]:
    """Rows of a user's CSV with a header naming ``smiles_col`` and every one of ``target_cols``."""
    path = Path(path)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in (smiles_col, *target_cols) if c not in (reader.fieldnames or [])]
        if missing:
            raise KeyError(f"{path}: column(s) {missing} not in the header {reader.fieldnames}")
        # Line 1 is the header, so the first data row is line 2.
        for line_number, row in enumerate(reader, start=2):
            yield _parse_row(line_number, row[smiles_col], {c: row[c] for c in target_cols})


def _parse_row(line: int, smiles: str, raw_targets: dict[str, str]) -> SourceRow | SkippedRow:
    smiles = smiles.strip()
    targets = {}
    for name, raw in raw_targets.items():
        try:
            value = float(raw)
        except (TypeError, ValueError):
            return SkippedRow(line, smiles, f"target {name!r} is not a number: {raw!r}")
        if not math.isfinite(value):
            return SkippedRow(line, smiles, f"target {name!r} is not finite: {raw!r}")
        targets[name] = value
    return SourceRow(line, smiles, targets)


def _check_molecule(row: SourceRow, descriptor_names: tuple[str, ...]) -> SourceRow | SkippedRow:
    """Parses with RDKit, checks the tokenizer covers the string, adds descriptor targets."""
    from rdkit import Chem

    if not row.smiles:
        return SkippedRow(row.line, row.smiles, "empty SMILES")
    mol = Chem.MolFromSmiles(row.smiles)
    if mol is None:
        return SkippedRow(row.line, row.smiles, "RDKit cannot parse this SMILES")
    try:
        tokenize(row.smiles)
    except TokenizationError as error:
        return SkippedRow(row.line, row.smiles, str(error))
    descriptors = _rdkit_descriptors()
    extra = {name: float(descriptors[name](mol)) for name in descriptor_names}
    clash = sorted(set(extra) & set(row.targets))
    if clash:
        raise ValueError(f"target(s) {clash} are both source columns and RDKit properties; drop one")
    return SourceRow(row.line, row.smiles, {**row.targets, **extra})


def split_assignment(n: int, config: PrepareConfig) -> np.ndarray:
    """Returns an array of n split names ('train'/'val'/'test'), a function of the seed alone."""
    order = np.random.default_rng(config.seed).permutation(n)
    n_val = int(round(n * config.val_fraction))
    n_test = int(round(n * config.test_fraction))
    assignment = np.full(n, "train", dtype=object)
    assignment[order[:n_val]] = "val"
    assignment[order[n_val : n_val + n_test]] = "test"
    return assignment


def prepare_dataset(
    out: Path,
    *,
    csv_path: Path | None = None,
    smiles_col: str = "smiles",
    target_cols: list[str] | None = None,
    config: PrepareConfig = PrepareConfig(),
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Builds the dataset under ``out`` and returns its manifest.

    With ``csv_path=None`` the source is RDKit's NCI set (TPSA from the file plus
    ``config.rdkit_properties``). Otherwise ``target_cols`` of the CSV are the labels and
    ``config.rdkit_properties`` are added only if non-empty. Rows RDKit cannot parse, or whose
    labels are missing or not finite, are skipped and listed (line number and reason) in the
    manifest's ``"skipped"``.
    """
    from rdkit import RDLogger

    out = Path(out)
    if csv_path is None:
        rows = read_default_rows()
        source = {"name": DEFAULT_SOURCE_NAME, "path": str(default_csv_path()), "sha256": sha256_file(default_csv_path())}
    else:
        if not target_cols:
            raise ValueError("a CSV source needs at least one target column (--target-cols)")
        rows = read_csv_rows(csv_path, smiles_col, target_cols)
        source = {"name": Path(csv_path).name, "path": str(csv_path), "sha256": sha256_file(Path(csv_path))}

    kept: list[SourceRow] = []
    skipped: list[SkippedRow] = []
    RDLogger.DisableLog("rdApp.*")  # we report unparsable rows ourselves, with line numbers
    try:
        for row in tqdm(rows, desc="parsing molecules", unit="mol", disable=not progress):
            checked = row if isinstance(row, SkippedRow) else _check_molecule(row, config.rdkit_properties)
            (skipped if isinstance(checked, SkippedRow) else kept).append(checked)
    finally:
        RDLogger.EnableLog("rdApp.*")
    if not kept:
        raise ValueError(f"no usable molecule in {source['path']} ({len(skipped)} rows skipped)")

    tokenizer = SmilesTokenizer.build(row.smiles for row in kept)
    target_names = list(kept[0].targets)
    splits = split_assignment(len(kept), config)

    encoded = [tokenizer.encode(row.smiles) for row in kept]

    with staged_directory(out, overwrite=overwrite) as staging:
        index = _write_shards(staging, kept, encoded, splits, config, target_names, progress)
        atomic_write_text(staging / "index.json", json.dumps(index, separators=(",", ":")) + "\n")
        tokenizer.save(staging / "vocab.json")
        manifest = _manifest(staging, source, kept, encoded, skipped, target_names, splits, tokenizer, config)
        # Written last: a directory holding a manifest is complete.
        atomic_write_text(staging / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


def _write_shards(staging, kept, encoded, splits, config, target_names, progress) -> list[dict]:
    (staging / "shards").mkdir()
    index = []
    starts = range(0, len(kept), config.shard_size)
    for shard_number, start in enumerate(tqdm(starts, desc="writing shards", unit="shard", disable=not progress)):
        relative = f"shards/shard-{shard_number:05d}.jsonl"
        lines = []
        for row_in_shard, row in enumerate(kept[start : start + config.shard_size]):
            label = row.targets if len(target_names) > 1 else row.targets[target_names[0]]
            record = {"smiles": row.smiles, "input_ids": encoded[start + row_in_shard], "label": label}
            lines.append(json.dumps(record, separators=(",", ":")))
            index.append({"file": relative, "row": row_in_shard, "split": splits[start + row_in_shard]})
        atomic_write_text(staging / relative, "\n".join(lines) + "\n")
    return index


def _manifest(staging, source, kept, encoded, skipped, target_names, splits, tokenizer, config) -> dict:
    train = splits == "train"
    values = np.array([[row.targets[name] for name in target_names] for row in kept], dtype=np.float64)
    lengths = np.array([len(ids) for ids in encoded])
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    return {
        "format": "ml-patterns-lazy-dataset/1",
        "created_by": f"ml-patterns {__version__}",
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "counts": {"rows_read": len(kept) + len(skipped), "molecules": len(kept), "skipped": len(skipped)},
        "skipped": [dataclasses.asdict(row) for row in skipped],
        "targets": {
            name: {"mean": float(values[train, j].mean()), "std": float(values[train, j].std())}
            for j, name in enumerate(target_names)
        },
        "statistics_from": "train split",
        "splits": {name: int((splits == name).sum()) for name in SPLITS},
        "config": dataclasses.asdict(config),
        "vocab_size": tokenizer.vocab_size,
        "sequence_length": {"min": int(lengths.min()), "max": int(lengths.max()), "mean": float(lengths.mean())},
        "checksums": {p.relative_to(staging).as_posix(): sha256_file(p) for p in files},
    }


def verify_checksums(root: Path) -> list[str]:
    """Returns the files whose sha256 differs from the manifest's (empty when all match)."""
    root = Path(root)
    manifest = json.loads((root / "manifest.json").read_text())
    bad = []
    for relative, expected in manifest["checksums"].items():
        path = root / relative
        if not path.is_file() or sha256_file(path) != expected:
            bad.append(relative)
    return bad


def read_manifest(root: Path) -> dict:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {root} is not a prepared dataset, or its preparation did not finish"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None

