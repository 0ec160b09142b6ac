"""What the subcommands' arguments share: the help formatter, value types and ``--data``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ml_patterns.errors import UsageError

DEFAULT_DATA_DIR = Path("data/nci")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help; one without a value (None, off) says in its text what
    happens then."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "(default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def rdkit_properties(text: str) -> tuple[str, ...]:
    from ml_patterns.molecules.config import RDKIT_PROPERTIES

    names = tuple(name for name in text.split(",") if name)
    unknown = [name for name in names if name not in RDKIT_PROPERTIES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown RDKit propert(y/ies) {unknown}; accepted: {','.join(RDKIT_PROPERTIES)}"
        )
    return names


def column_names(text: str) -> tuple[str, ...]:
    """``"pIC50, active"`` -> ``("pIC50", "active")``: names trimmed, none empty or repeated."""
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"an empty column name in {text!r}; separate names with single commas")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"column(s) {repeated} named more than once")
    return names


def delimiter(text: str) -> str:
    """One character; ``\\t`` or ``tab`` for a tab (a real tab is hard to type in a shell)."""
    value = {"\\t": "\t", "tab": "\t"}.get(text, text)
    if len(value) != 1:
        raise argparse.ArgumentTypeError(f"must be one character (or '\\t' for a tab), got {text!r}")
    return value


def dataset_argument(data: Path | None) -> Path:
    """``--data`` of compare and bench: a given path must be a prepared dataset (a typo is an error,
    not a reason to prepare one there); without ``--data``, the default one (prepared if missing).
    The error says how to prepare the user's own molecules: from a file given as ``--data`` itself
    (a CSV, ``.smi`` or SDF, not a dataset), into a folder under ``data/`` named after it."""
    if data is None:
        return DEFAULT_DATA_DIR
    if (data / "manifest.json").is_file():
        return data
    if data.is_file():
        folder = DEFAULT_DATA_DIR.parent / (data.stem if data.suffix else data.name + "-dataset")
        raise UsageError(
            f"--data {data} is a file; --data takes a dataset folder made by `ml-patterns prepare`: run "
            f"`ml-patterns prepare --csv {data} --target-cols COLUMNS --out {folder}`, then pass --data {folder}"
        )
    problem = "does not exist" if not data.exists() else "is not a prepared dataset (it has no manifest.json)"
    raise UsageError(
        f"--data {data} {problem}; to use your own molecules, prepare them there with "
        f"`ml-patterns prepare --csv FILE --target-cols COLUMNS --out {data}`, or leave --data out for the "
        f"default dataset ({DEFAULT_DATA_DIR}, prepared there on first use)"
    )
