"""Reads the molecule tables that ``prepare`` turns into datasets, reporting problems by true line number.

A CSV is read as bytes and decoded line by line, so a byte that is not UTF-8 is reported on its own
line (a text-mode file decodes ahead in 8 KB chunks, and the error would name some earlier line). A
UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped. A record spanning several lines (a quoted
field holding a line break) is numbered by its first line, and the records after it keep their true
numbers: the count comes from the CSV reader's ``line_num``, not from a row counter.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

from ml_patterns.errors import OptionError, UsageError

# Larger than any molecule a sequence model is trained on (the models take at most a few hundred
# tokens); a longer field is most often an unbalanced quote that swallowed the lines after it. Such a
# row is skipped and reported, not fed to RDKit.
MAX_SMILES_CHARS = 10_000
# The csv module refuses fields over 128 KB with a bare "_csv.Error: field larger than field limit";
# the limit is lifted while we read (to the largest value every platform's C long holds), so a long
# field reaches the check above and is reported with its line.
_FIELD_SIZE_LIMIT = 2**31 - 1
# The texts a label field holds when the value is missing (pandas' usual markers, any case): such a
# label is kept as missing (None), and the row kept if another of its targets has a value.
MISSING_LABELS = frozenset({"", "na", "n/a", "nan", "-nan", "null", "none", "#n/a"})


class SourceError(UsageError):
    """A source table that cannot be used; the message names the file (and the line, where there is one)."""


class MissingColumnsError(SourceError, KeyError):
    """The header lacks a column the options name (a ``KeyError`` too, as a missing key is)."""

    def __str__(self) -> str:  # KeyError's would quote the message
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class SourceRow:
    line: int  # 1-based line number in the source file where the record starts, for error reports
    smiles: str
    targets: dict[str, float | None]  # None: the label is missing for this target
    canonical: str = ""  # RDKit's canonical SMILES, set once the molecule is parsed


@dataclasses.dataclass(frozen=True)
class SkippedRow:
    line: int
    smiles: str
    reason: str


def default_csv_path() -> Path:
    """The NCI set shipped inside the RDKit wheel: 5,000 SMILES with TPSA values, no header."""
    from rdkit import RDConfig

    return Path(RDConfig.RDDataDir) / "NCI" / "first_5k.tpsa.csv"


def require_regular_file(path: Path, option: str = "csv_path") -> None:
    """Refuses a missing path, a directory, a FIFO or a device before it is opened (a FIFO would block)."""
    cli_flag = {"csv_path": "--csv", "labels_path": "--labels"}.get(option)
    if not path.exists():
        raise OptionError(option, f"{{option}}: {path}: no such file", cli_flag=cli_flag)
    if not path.is_file():
        raise OptionError(
            option, f"{{option}}: {path} is not a regular file (a directory, FIFO or device)", cli_flag=cli_flag
        )


def read_default_rows() -> Iterator[SourceRow | SkippedRow]:
    """Rows of RDKit's NCI file: ``SMILES,TPSA`` with ``#`` comment lines and no header."""
    path = default_csv_path()
    for line, fields in csv_records(path):
        if not fields or fields[0].startswith("#"):
            continue
        yield parse_row(line, fields[0], {"TPSA": fields[1] if len(fields) > 1 else ""})


def csv_records(path: Path, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """``(first line, fields)`` of every CSV record of ``path``, blank lines included (as ``[]``)."""
    with open(path, "rb") as handle, _field_size_limit(_FIELD_SIZE_LIMIT):
        reader = csv.reader(decoded_lines(path, handle), delimiter=delimiter)
        last_line = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                raise SourceError(f"{path}, line {last_line + 1}: not valid CSV ({error})") from None
            yield last_line + 1, fields
            last_line = reader.line_num


def decoded_lines(path: Path, lines: Iterable[bytes]) -> Iterator[str]:
    """The lines of ``path`` as text; a byte that is not UTF-8 is a ``SourceError`` naming its line."""
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise SourceError(
                f"{path}, line {number}: byte {raw[error.start]:#04x} at column {error.start + 1} is not UTF-8; "
                "save the file as UTF-8"
            ) from None
        yield text.removeprefix("\ufeff") if number == 1 else text


@contextlib.contextmanager
def _field_size_limit(limit: int) -> Iterator[None]:
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def parse_row(line: int, smiles: str, raw_targets: dict[str, str]) -> SourceRow | SkippedRow:
    """The row's SMILES and labels: a label in ``MISSING_LABELS`` is missing (``None``); a row
    missing every label is skipped (nothing to learn from it), as is one with a label that is text
    or not finite (a mistake in the data rather than a gap)."""
    smiles = smiles.strip()
    if len(smiles) > MAX_SMILES_CHARS:
        return SkippedRow(
            line,
            smiles[:40] + "...",
            f"SMILES of {len(smiles)} characters, over {MAX_SMILES_CHARS} (an unbalanced quote?)",
        )
    targets: dict[str, float | None] = {}
    for name, raw in raw_targets.items():
        if raw is None or raw.strip().lower() in MISSING_LABELS:
            targets[name] = None
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError):
            return SkippedRow(line, smiles, f"target {name!r} is not a number: {raw!r}")
        if not math.isfinite(value):
            return SkippedRow(line, smiles, f"target {name!r} is not finite: {raw!r}")
        targets[name] = value
    if targets and all(value is None for value in targets.values()):
        shown = ", ".join(f"{name!r}: {raw!r}" for name, raw in raw_targets.items())
        return SkippedRow(line, smiles, f"no label: every target is missing ({shown})")
    return SourceRow(line, smiles, targets)
