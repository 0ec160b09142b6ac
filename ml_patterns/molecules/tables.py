"""The files ``prepare`` reads, as tables of named text fields: CSV/TSV, ``.smi`` and SDF, and a
separate label file joined to the molecules on an id column.

The format follows the extension: ``.sdf``/``.sd`` is an SDF (read by RDKit's ``SDMolSupplier``, the
SMILES written from each molecule), ``.smi``/``.smiles`` a SMILES file (SMILES, id, then any values,
separated by whitespace), anything else a delimited table whose delimiter is sniffed (comma, tab,
semicolon or bar) unless given. Every record keeps the line it starts on, for error reports.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator
from pathlib import Path

from ml_patterns.io import printable
from ml_patterns.molecules.sources import (
    MissingColumnsError,
    SkippedRow,
    SourceError,
    SourceRow,
    csv_records,
    decoded_lines,
    parse_row,
)

SDF_SUFFIXES = (".sdf", ".sd")
SMI_SUFFIXES = (".smi", ".smiles")
SNIFFED_DELIMITERS = ",\t;|"
# Enough lines for csv.Sniffer to see the delimiter repeat; a sample cut mid-line is fine for it.
_SNIFF_BYTES = 64 * 1024
# An SDF's SMILES (RDKit's, from the molecule) and title line (RDKit's "_Name") as table columns.
SDF_SMILES = "SMILES (from the molecule)"
SDF_TITLE = "_Name"

Record = tuple[int, dict[str, str]]


@dataclasses.dataclass
class Table:
    """A file's records: ``(first line, {column: text})`` each, or a ``SkippedRow`` for one that
    cannot be read into the columns (a wrong number of fields, a molecule RDKit cannot read)."""

    path: Path
    kind: str  # "csv", "smi" or "sdf"
    columns: list[str]
    records: Iterator[Record | SkippedRow]
    # Where the format fixes them: the SMILES column (.smi, SDF) and the id column (.smi's second
    # field, an SDF's title); None where the header names them (CSV).
    smiles_column: str | None = None
    id_column: str | None = None
    delimiter: str | None = None  # the CSV's, sniffed or given


def open_table(path: Path, sep: str | None = None) -> Table:
    """The table in ``path``, its format from the extension (see the module's docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SDF_SUFFIXES:
        return read_sdf_table(path)
    if suffix in SMI_SUFFIXES:
        return read_smi_table(path)
    return read_csv_table(path, sep)


def sniff_delimiter(path: Path) -> str:
    """The delimiter of a CSV/TSV, guessed by ``csv.Sniffer`` from its start; a file it cannot tell
    (one column) is read as ``.tsv``: tab, otherwise comma."""
    with open(path, "rb") as handle:
        sample = handle.read(_SNIFF_BYTES).decode("utf-8", errors="replace")
    try:
        return csv.Sniffer().sniff(sample, delimiters=SNIFFED_DELIMITERS).delimiter
    except csv.Error:
        return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def read_csv_table(path: Path, sep: str | None = None) -> Table:
    """A delimited table with a header line; its column names are trimmed of surrounding spaces."""
    delimiter = sep or sniff_delimiter(path)
    rows = csv_records(path, delimiter)
    header = [name.strip() for name in next(rows, (1, []))[1]]
    return Table(path, "csv", header, _named(rows, header), delimiter=delimiter)


def _named(rows: Iterator[tuple[int, list[str]]], header: list[str]) -> Iterator[Record | SkippedRow]:
    for line, fields in rows:
        if not fields or fields == [""]:  # a blank line
            continue
        if len(fields) != len(header):
            yield SkippedRow(line, fields[0], f"{len(fields)} fields where the header has {len(header)}")
            continue
        yield line, dict(zip(header, fields))


def _is_smi_header(first_field: str) -> bool:
    name = first_field.lstrip("#").lower()
    return name in ("smi", "smiles") or name.endswith("smiles")


def read_smi_table(path: Path) -> Table:
    """A SMILES file: SMILES, id, then any values, separated by spaces or tabs. A first line whose
    first field is ``smiles`` (``SMILES``, ``#smiles``, ``canonical_smiles``) is the header; without
    one the columns are ``smiles``, ``id``, ``column3``, ``column4``, ..."""
    with open(path, "rb") as handle:
        lines = [(number, text.split()) for number, text in enumerate(decoded_lines(path, handle), start=1)]
    lines = [(number, fields) for number, fields in lines if fields]
    if not lines:
        raise SourceError(f"{path}: no molecule in this SMILES file")
    width = len(lines[0][1])
    if _is_smi_header(lines[0][1][0]):
        header, lines = lines[0][1], lines[1:]
    else:
        header = ["smiles", "id", *(f"column{i}" for i in range(3, width + 1))][:width]
    id_column = header[1] if len(header) > 1 else None
    return Table(path, "smi", header, _named(iter(lines), header), smiles_column=header[0], id_column=id_column)


def read_sdf_table(path: Path) -> Table:
    """An SDF: every property of every record is a column, with the title line (``_Name``) and
    RDKit's SMILES of the molecule. A record RDKit cannot read is skipped, with its line."""
    from rdkit import Chem

    starts = _sdf_record_starts(path)
    records: list[Record | SkippedRow] = []
    columns = {SDF_SMILES: None, SDF_TITLE: None}
    for number, mol in enumerate(Chem.SDMolSupplier(str(path))):
        line = starts[number] if number < len(starts) else starts[-1]
        if mol is None:
            records.append(SkippedRow(line, "", f"RDKit cannot read molecule record {number + 1}"))
            continue
        fields = {name: mol.GetProp(name) for name in mol.GetPropNames()}
        fields[SDF_TITLE] = mol.GetProp(SDF_TITLE) if mol.HasProp(SDF_TITLE) else ""
        fields[SDF_SMILES] = Chem.MolToSmiles(mol)
        columns.update(dict.fromkeys(fields))
        records.append((line, fields))
    if not records:
        raise SourceError(f"{path}: no molecule record in this SDF")
    return Table(path, "sdf", list(columns), iter(records), smiles_column=SDF_SMILES, id_column=SDF_TITLE)


def _sdf_record_starts(path: Path) -> list[int]:
    """The line each SDF record starts on: line 1, then the line after each ``$$$$``."""
    starts = [1]
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.rstrip() == b"$$$$":
                starts.append(number + 1)
    return starts


class LabelJoin:
    """The labels of a separate file, looked up by molecule id; counts what matched.

    An id listed twice in the label file is refused (which label would count?): aggregate repeated
    measurements first.
    """

    def __init__(self, table: Table, id_col: str, target_cols: list[str]):
        _require_columns(table, [id_col, *target_cols])
        self.path, self.id_col = table.path, id_col
        self.labels: dict[str, Record] = {}
        self.skipped_rows = 0
        for record in table.records:
            if isinstance(record, SkippedRow):
                self.skipped_rows += 1
                continue
            line, fields = record
            key = fields[id_col].strip()
            if key in self.labels:
                raise SourceError(
                    f"{table.path}: id {printable(key)!r} has labels on lines {self.labels[key][0]} and {line}; "
                    "keep one row per id (aggregate repeated measurements first)"
                )
            self.labels[key] = (line, {name: fields[name] for name in target_cols})
        self.matched: set[str] = set()
        self.unlabeled: list[str] = []

    def lookup(self, key: str) -> dict[str, str] | None:
        key = key.strip()
        if key not in self.labels:
            self.unlabeled.append(key)
            return None
        self.matched.add(key)
        return self.labels[key][1]

    def summary(self) -> dict:
        """For the manifest: what joined and what did not (the first 10 ids of each kind)."""
        orphans = [key for key in self.labels if key not in self.matched]
        return {
            "id_col": self.id_col,
            "labelled_molecules": len(self.matched),
            "molecules_without_label": len(self.unlabeled),
            "labels_without_molecule": len(orphans),
            "label_rows_skipped": self.skipped_rows,
            "examples": {"molecules_without_label": self.unlabeled[:10], "labels_without_molecule": orphans[:10]},
        }


def _require_columns(table: Table, names: list[str]) -> None:
    missing = [name for name in names if name not in table.columns]
    if missing:
        raise MissingColumnsError(f"{table.path}: column(s) {missing} not in the header {table.columns}")


def source_rows(
    table: Table, smiles_col: str, target_cols: list[str], join: LabelJoin | None = None
) -> Iterator[SourceRow | SkippedRow]:
    """The molecules of ``table`` with their labels: from its own ``target_cols``, or, with ``join``,
    from the label file's row with the molecule's id (a molecule without one is counted by ``join``).
    Missing columns are refused here, before any row is read."""
    smiles_col = table.smiles_column or smiles_col
    if join is None:
        _require_columns(table, [smiles_col, *target_cols])
        return _own_labels(table, smiles_col, target_cols)
    id_col = join.id_col if join.id_col in table.columns else table.id_column
    if id_col is None:
        raise MissingColumnsError(
            f"{table.path}: no column {join.id_col!r} to join the labels of {join.path} on; columns: {table.columns}"
        )
    _require_columns(table, [smiles_col, id_col])
    return _joined_labels(table, smiles_col, id_col, join)


def _own_labels(table: Table, smiles_col: str, target_cols: list[str]) -> Iterator[SourceRow | SkippedRow]:
    for record in table.records:
        if isinstance(record, SkippedRow):
            yield record
            continue
        line, fields = record
        # An SDF record lacking a property has no such field: its label is missing.
        yield parse_row(line, fields[smiles_col], {name: fields.get(name, "") for name in target_cols})


def _joined_labels(table: Table, smiles_col: str, id_col: str, join: LabelJoin) -> Iterator[SourceRow | SkippedRow]:
    for record in table.records:
        if isinstance(record, SkippedRow):
            yield record
            continue
        line, fields = record
        labels = join.lookup(fields[id_col])
        if labels is not None:
            yield parse_row(line, fields[smiles_col], labels)
