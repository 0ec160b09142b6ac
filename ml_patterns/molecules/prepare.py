"""Turns a molecule table into the lazy on-disk dataset that ``LazyDataset`` reads.

Layout written under ``DIR`` (all of it appears at once: it is built in a staging directory and
renamed into place, see ``ml_patterns.io.staged_directory``)::

    DIR/index.json         list; entry i = {"file": "shards/shard-00000.jsonl", "row": r, "split": "train"}
    DIR/shards/*.jsonl     one JSON record per line: {"smiles", "input_ids", "label"} (a missing label: null)
    DIR/vocab.json         the tokenizer's vocabulary
    DIR/manifest.json      source, counts, skipped rows, duplicates, targets (kind, mean/std on train,
                           labelled rows per split, classes), splits, config, checksums

RDKit is imported here only, and only while preparing: reading a prepared dataset needs numpy alone.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ml_patterns import __version__
from ml_patterns.errors import OptionError
from ml_patterns.io import atomic_write_text, printable, sha256_file, staged_directory
from ml_patterns.molecules.config import MLM_TASK, RDKIT_PROPERTIES, TASK_KINDS, PrepareConfig
from ml_patterns.molecules.manifest import (  # read back here, re-exported: where callers find them
    FORMAT_PREFIX,
    SPLITS,
    manifest_digest,
    read_manifest,
    verify_checksums,
)
from ml_patterns.molecules.sources import (
    SkippedRow,
    SourceError,
    SourceRow,
    default_csv_path,
    read_default_rows,
    require_regular_file,
)
from ml_patterns.molecules.splits import SPLIT_MODES, assign_splits, check_split_sizes, group_keys
from ml_patterns.molecules.tables import LabelJoin, open_table, source_rows
from ml_patterns.molecules.targets import check_learnable, label_matrix, target_kind, target_summary
from ml_patterns.molecules.tokenizer import SmilesTokenizer, TokenizationError, tokenize

DEFAULT_SOURCE_NAME = "RDKit NCI first_5k.tpsa.csv"
__all__ = ["ConflictingLabelsWarning", "prepare_dataset", "read_manifest", "verify_checksums"]


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
    return SourceRow(row.line, row.smiles, {**row.targets, **extra}, canonical=Chem.MolToSmiles(mol))


def prepare_dataset(
    out: Path,
    *,
    csv_path: Path | None = None,
    smiles_col: str = "smiles",
    target_cols: list[str] | None = None,
    config: PrepareConfig = PrepareConfig(),
    overwrite: bool = False,
    progress: bool = True,
    sep: str | None = None,
    labels_path: Path | None = None,
    id_col: str | None = None,
    split: str = "random",
    task_kinds: dict[str, str] | None = None,
) -> dict:
    """Builds the dataset under ``out`` and returns its manifest.

    With ``csv_path=None`` the source is RDKit's NCI set (TPSA from the file plus
    ``config.rdkit_properties``). Otherwise ``target_cols`` of the CSV are the labels and
    ``config.rdkit_properties`` are added only if non-empty. Rows RDKit cannot parse, whose labels
    are text or not finite, or that miss every label, are skipped and listed (line number and reason)
    in the manifest's ``"skipped"``. A row missing some labels (an empty field, ``NA``, ``nan``: see
    ``sources.MISSING_LABELS``) is kept, its missing labels written as ``null``; each target's
    ``"labelled"`` counts its labelled rows per split, and its mean/std are over the labelled training
    rows. A target with no labelled training row is refused, naming it. Rows repeating a molecule
    (same canonical SMILES) are kept and counted in ``"duplicates"``; those whose labels differ from
    the first occurrence are listed there (``"conflicts"``: line, first line, SMILES, both labels) and
    warned about (``ConflictingLabelsWarning``).

    ``overwrite`` replaces only a dataset this function wrote (its manifest, and no file it does not
    list); never a directory holding the source CSV, nor the working directory or one above it.
    Everything is checked before the source is read: a bad option or output fails at once.

    ``csv_path`` may be any table ``ml_patterns.molecules.tables.open_table`` reads: a CSV/TSV (its
    delimiter ``sep``, sniffed when ``None``), a ``.smi`` file, or an SDF (``target_cols`` are then
    its properties). With ``labels_path`` the labels come from that table instead, joined on its column
    ``id_col`` (the molecule file's column of that name, else the ``.smi``'s id field or the SDF's
    title); the manifest's ``"labels"`` counts the molecules without a label row (dropped) and the
    label rows without a molecule.

    ``split`` is ``"random"`` or ``"scaffold"`` (``ml_patterns.molecules.splits``): either way a
    repeated molecule lands in one split only; a val/test split under ``MIN_EVAL_MOLECULES`` is refused.

    ``task_kinds`` (``{column: "regression" | "classification"}``) sets a target's kind; the others'
    are guessed from their values (``ml_patterns.molecules.targets``), and recorded in the manifest
    (``targets.NAME.task``, with ``classes`` for classification).
    """
    out = Path(out)
    source_columns = ("TPSA",) if csv_path is None else tuple(target_cols or ())
    _check_options(config, csv_path, source_columns)
    _check_task_kinds(task_kinds or {}, (*source_columns, *config.rdkit_properties))
    _check_join_options(csv_path, sep, labels_path, id_col)
    if split not in SPLIT_MODES:
        raise OptionError("split", f"{{option}} must be one of {', '.join(SPLIT_MODES)}, got {split!r}")
    source_path = default_csv_path() if csv_path is None else Path(csv_path)
    require_regular_file(source_path)
    if labels_path is not None:
        labels_path = Path(labels_path)
        require_regular_file(labels_path, "labels_path")
    protect = (source_path,) if labels_path is None else (source_path, labels_path)
    # The staging directory is made first: an output that cannot be written fails before the source is read.
    with staged_directory(out, overwrite=overwrite, foreign=foreign_to_prepare, protect=protect) as staging:
        source, kept, skipped, join = _read_source(
            source_path, csv_path, smiles_col, list(source_columns), config, progress, sep, labels_path, id_col
        )
        tasks = task_names(list(kept[0].targets))
        kept = [dataclasses.replace(row, targets={tasks[k]: v for k, v in row.targets.items()}) for row in kept]
        duplicates, conflicts = _duplicates(kept)
        if conflicts:
            first = conflicts[0]
            warnings.warn(
                f"{source['path']}: {len(conflicts)} row(s) repeat a molecule with different labels (first: line "
                f"{first['line']} vs line {first['first_line']}, {printable(first['smiles'][:40])}); all are kept, see "
                '"duplicates" in manifest.json',
                ConflictingLabelsWarning,
                stacklevel=2,
            )
        tokenizer = SmilesTokenizer.build(row.smiles for row in kept)
        target_names = list(kept[0].targets)
        splits = assign_splits(group_keys([row.canonical for row in kept], split), config, split)
        check_split_sizes(splits, config, source["path"])
        columns = {task: column for column, task in tasks.items()}
        values = label_matrix(kept, target_names)
        kinds = {}
        for j, task in enumerate(target_names):
            check_learnable(values[:, j], splits, columns[task], source["path"])
            labelled = values[~np.isnan(values[:, j]), j]
            kinds[task] = target_kind(labelled, columns[task], (task_kinds or {}).get(columns[task]), source["path"])
        encoded = [tokenizer.encode(row.smiles) for row in kept]

        index = _write_shards(staging, kept, encoded, splits, config, target_names, progress)
        atomic_write_text(staging / "index.json", json.dumps(index, separators=(",", ":")) + "\n")
        tokenizer.save(staging / "vocab.json")
        manifest = _manifest(staging, source, kept, encoded, skipped, values, kinds, splits, split, tokenizer, config)
        manifest["duplicates"] = {"rows": duplicates, "conflicting": len(conflicts), "conflicts": conflicts}
        if join is not None:
            manifest["labels"] = {"path": str(labels_path), "sha256": sha256_file(labels_path), **join.summary()}
        for column, task in tasks.items():
            if column != task:
                manifest["targets"][task]["column"] = column
        manifest["manifest_sha256"] = manifest_digest(manifest)
        # Written last: a directory holding a manifest is complete.
        atomic_write_text(staging / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


def _read_source(source_path, csv_path, smiles_col, target_cols, config, progress, sep, labels_path, id_col):
    """``(source description, kept rows, skipped rows, label join or None)``; RDKit's parse of every row."""
    from rdkit import RDLogger

    kept: list[SourceRow] = []
    skipped: list[SkippedRow] = []
    join = None
    RDLogger.DisableLog("rdApp.*")  # we report unparsable rows ourselves, with line numbers
    try:
        if csv_path is None:
            rows = read_default_rows()
            source = {"name": DEFAULT_SOURCE_NAME, "path": str(source_path), "format": "csv"}
        else:
            # Opened (header and columns checked) before the progress bar starts: a refused file
            # prints its error alone.
            table = open_table(source_path, sep)
            if labels_path is not None:
                join = LabelJoin(open_table(labels_path, sep), id_col, target_cols)
            rows = source_rows(table, smiles_col, target_cols, join)
            source = {"name": source_path.name, "path": str(csv_path), "format": table.kind}
        source["sha256"] = sha256_file(source_path)
        # disable=None: no bar off a terminal (a log or a pipe gets no carriage-return updates).
        for row in tqdm(rows, desc="parsing molecules", unit="mol", disable=None if progress else True):
            checked = row if isinstance(row, SkippedRow) else _check_molecule(row, config.rdkit_properties)
            (skipped if isinstance(checked, SkippedRow) else kept).append(checked)
    finally:
        RDLogger.EnableLog("rdApp.*")
    if not kept:
        unlabeled = f", {len(join.unlabeled)} without a label row in {labels_path}" if join else ""
        raise SourceError(f"no usable molecule in {source['path']} ({len(skipped)} rows skipped{unlabeled})")
    return source, kept, skipped, join


def task_names(columns: list[str]) -> dict[str, str]:
    """``{label column: task name}``. A task name becomes a parameter name of the models
    (``heads.<task>.dense.weight``): its dots become underscores (``log.S`` -> ``log_S``), and a name
    taken already (or the masked-token head's) gets a number; the manifest keeps the column's name
    (``targets.<task>.column``)."""
    names: dict[str, str] = {}
    taken = {MLM_TASK}
    for column in columns:
        base = column.replace(".", "_") or "target"
        task, number = base, 2
        while task in taken:
            task, number = f"{base}_{number}", number + 1
        names[column] = task
        taken.add(task)
    return names


class ConflictingLabelsWarning(UserWarning):
    """The source lists one molecule more than once with different labels."""


def _check_options(config: PrepareConfig, csv_path: Path | None, source_columns: tuple[str, ...]) -> None:
    """Refuses what ``PrepareConfig`` cannot know to refuse, naming the option (and its flag)."""
    seed = config.seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OptionError("seed", f"{{option}} must be an integer >= 0, got {seed!r}")
    unknown = [name for name in config.rdkit_properties if name not in RDKIT_PROPERTIES]
    if unknown:
        raise OptionError(
            "rdkit_properties",
            f"{{option}} names unknown RDKit properties {unknown}; known: {', '.join(RDKIT_PROPERTIES)}",
        )
    if csv_path is not None and not source_columns:
        raise OptionError("target_cols", "{option} must name at least one label column of the CSV")
    names = [name for name in source_columns if not isinstance(name, str) or not name.strip() or name != name.strip()]
    if names:
        raise OptionError("target_cols", f"{{option}}: names {names} are empty or have surrounding spaces")
    repeated = sorted({name for name in source_columns if source_columns.count(name) > 1})
    if repeated:
        raise OptionError("target_cols", f"{{option}} names {repeated} more than once")
    clash = sorted(set(source_columns) & set(config.rdkit_properties))
    if clash:
        raise OptionError(
            "rdkit_properties", f"{{option}} {clash} are also source columns; drop them from one of the two"
        )


def _check_task_kinds(task_kinds: dict, columns: tuple[str, ...]) -> None:
    unknown = sorted(set(task_kinds) - set(columns))
    if unknown:
        raise OptionError(
            "task_kinds",
            f"{{option}} names {unknown}, not targets of this dataset ({', '.join(columns)})",
            cli_flag="--task",
        )
    bad = {name: kind for name, kind in task_kinds.items() if kind not in TASK_KINDS}
    if bad:
        raise OptionError(
            "task_kinds", f"{{option}}: kinds must be one of {', '.join(TASK_KINDS)}, got {bad}", cli_flag="--task"
        )


def _check_join_options(csv_path, sep, labels_path, id_col) -> None:
    if sep is not None and (not isinstance(sep, str) or len(sep) != 1):
        raise OptionError("sep", f"{{option}} must be one character (a tab is '\\t'), got {sep!r}")
    if labels_path is not None and csv_path is None:
        raise OptionError(
            "labels_path", "{option} joins labels to your own molecule file: give it too", cli_flag="--labels"
        )
    if (labels_path is None) != (id_col is None):
        raise OptionError("id_col", "{option} and labels_path go together: the label file and the id column to join on")


def foreign_to_prepare(directory: Path) -> str | None:
    """Why ``directory`` is not a dataset that ``prepare_dataset`` may replace, or ``None`` if it is."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return "it is not a dataset written by `ml-patterns prepare` (no readable manifest.json)"
    if not isinstance(manifest, dict) or not str(manifest.get("format", "")).startswith(FORMAT_PREFIX):
        return "its manifest.json is not an ml-patterns dataset manifest"
    checksums = manifest.get("checksums")
    if not isinstance(checksums, dict):
        return "its manifest.json lists no files ('checksums'), so what it holds cannot be told apart"
    ours = {"manifest.json", *checksums}
    others = []
    for parent, directories, files in os.walk(directory):
        for name in files + [d for d in directories if os.path.islink(os.path.join(parent, d))]:
            relative = Path(parent, name).relative_to(directory).as_posix()
            if relative not in ours:
                others.append(relative)
    if others:
        return (
            f"it holds {len(others)} file(s) prepare did not write ({', '.join(sorted(others)[:3])}); move them first"
        )
    return None


def _duplicates(kept: list[SourceRow]) -> tuple[int, list[dict]]:
    """Rows repeating an earlier molecule, and those of them whose labels differ from the first one's."""
    first: dict[str, SourceRow] = {}
    duplicates, conflicts = 0, []
    for row in kept:
        earlier = first.setdefault(row.canonical, row)
        if earlier is row:
            continue
        duplicates += 1
        if row.targets != earlier.targets:
            conflicts.append(
                {
                    "line": row.line,
                    "first_line": earlier.line,
                    "smiles": row.smiles,
                    "labels": row.targets,
                    "first_labels": earlier.targets,
                }
            )
    return duplicates, conflicts


def _write_shards(staging, kept, encoded, splits, config, target_names, progress) -> list[dict]:
    (staging / "shards").mkdir()
    index = []
    starts = range(0, len(kept), config.shard_size)
    bar = tqdm(starts, desc="writing shards", unit="shard", disable=None if progress else True)
    for shard_number, start in enumerate(bar):
        relative = f"shards/shard-{shard_number:05d}.jsonl"
        lines = []
        for row_in_shard, row in enumerate(kept[start : start + config.shard_size]):
            label = row.targets if len(target_names) > 1 else row.targets[target_names[0]]
            record = {"smiles": row.smiles, "input_ids": encoded[start + row_in_shard], "label": label}
            lines.append(json.dumps(record, separators=(",", ":")))
            index.append({"file": relative, "row": row_in_shard, "split": splits[start + row_in_shard]})
        atomic_write_text(staging / relative, "\n".join(lines) + "\n")
    return index


def _manifest(staging, source, kept, encoded, skipped, values, kinds, splits, split_mode, tokenizer, config) -> dict:
    lengths = np.array([len(ids) for ids in encoded])
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    return {
        "format": f"{FORMAT_PREFIX}1",
        "created_by": f"ml-patterns {__version__}",
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source": source,
        "counts": {"rows_read": len(kept) + len(skipped), "molecules": len(kept), "skipped": len(skipped)},
        "skipped": [dataclasses.asdict(row) for row in skipped],
        "targets": {name: target_summary(values[:, j], splits, *kinds[name]) for j, name in enumerate(kinds)},
        "statistics_from": "train split, labelled rows",
        "splits": {name: int((splits == name).sum()) for name in SPLITS},
        "split_mode": split_mode,
        "config": dataclasses.asdict(config),
        "vocab_size": tokenizer.vocab_size,
        "sequence_length": {"min": int(lengths.min()), "max": int(lengths.max()), "mean": float(lengths.mean())},
        "checksums": {p.relative_to(staging).as_posix(): sha256_file(p) for p in files},
    }
