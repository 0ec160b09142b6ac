"""``ml-patterns prepare`` and ``info``: the dataset (no backend is loaded)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ml_patterns.errors import UsageError
from ml_patterns.io import printable
from ml_patterns_app.cli.arguments import (
    DEFAULT_DATA_DIR,
    column_names,
    delimiter,
    non_negative_int,
    positive_int,
    rdkit_properties,
)


def _add_prepare(parser: argparse.ArgumentParser) -> None:
    from ml_patterns.molecules.config import DEFAULT_RDKIT_PROPERTIES, RDKIT_PROPERTIES, TASK_KINDS, PrepareConfig
    from ml_patterns.molecules.splits import MIN_EVAL_MOLECULES, SPLIT_MODES

    defaults = PrepareConfig()
    parser.add_argument("--out", type=Path, default=DEFAULT_DATA_DIR, help="output directory")
    parser.add_argument(
        "--csv",
        type=Path,
        default=None,
        help="your own molecule file instead of the embedded RDKit NCI set, by its extension: a CSV/TSV "
        "(header line), a .smi (SMILES, id [, values]) or an .sdf (needs --target-cols/--label-prop)",
    )
    parser.add_argument(
        "--sep", type=delimiter, default=None, help="delimiter of a CSV/TSV, and of --labels (default: sniffed in each)"
    )
    parser.add_argument("--smiles-col", default="smiles", help="SMILES column of a CSV/TSV")
    parser.add_argument(
        "--target-cols",
        "--label-prop",
        type=column_names,
        default=None,
        help="comma-separated label columns (an SDF's properties; with --labels, the label file's), "
        "e.g. 'pIC50, active'",
    )
    parser.add_argument("--labels", type=Path, default=None, help="a separate CSV/TSV of labels, joined on --id-col")
    parser.add_argument(
        "--id-col",
        default=None,
        help="with --labels: the id column of the label file, matched to the molecule file's column of that "
        "name, else to a .smi's id field or an SDF's title line",
    )
    parser.add_argument(
        "--rdkit-properties",
        type=rdkit_properties,
        default=None,
        help=f"comma-separated RDKit descriptors to add as targets, of: {','.join(RDKIT_PROPERTIES)}; "
        f"'' for none (default: {','.join(DEFAULT_RDKIT_PROPERTIES)} for the embedded set, none for --csv)",
    )
    parser.add_argument(
        "--split",
        choices=SPLIT_MODES,
        default="random",
        help="hold out random molecules, or whole Bemis-Murcko scaffolds (a repeated molecule stays in one "
        f"split either way; a val/test split under {MIN_EVAL_MOLECULES} molecules is refused)",
    )
    parser.add_argument(
        "--task",
        type=task_kind,
        action="append",
        default=None,
        metavar="NAME=KIND",
        help=f"a target's kind, {' or '.join(TASK_KINDS)} (repeat the flag for several); the others': "
        "classification (binary) if its values are exactly 0 and 1, else regression. A multiclass target's "
        "labels must be the class ids 0..C-1",
    )
    parser.add_argument("--seed", type=non_negative_int, default=defaults.seed, help="seed of the train/val/test split")
    parser.add_argument(
        "--val-fraction", type=float, default=defaults.val_fraction, help="molecules held out for validation"
    )
    parser.add_argument(
        "--test-fraction", type=float, default=defaults.test_fraction, help="molecules held out for test"
    )
    parser.add_argument("--shard-size", type=positive_int, default=defaults.shard_size, help="records per shard file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_prepare(args: argparse.Namespace) -> int:
    from ml_patterns.molecules.config import PrepareConfig
    from ml_patterns.molecules.prepare import prepare_dataset

    if args.csv is not None and not args.target_cols:
        raise UsageError("--csv needs --target-cols (the label columns to train on; --label-prop for an SDF)")
    properties = args.rdkit_properties
    if properties is None:
        properties = PrepareConfig().rdkit_properties if args.csv is None else ()
    try:
        config = PrepareConfig(
            seed=args.seed,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            shard_size=args.shard_size,
            rdkit_properties=properties,
        )
    except ValueError as error:  # fractions out of range: the flags' values
        raise UsageError(str(error)) from error
    manifest = prepare_dataset(
        args.out,
        csv_path=args.csv,
        smiles_col=args.smiles_col,
        target_cols=list(args.target_cols) if args.target_cols else None,
        config=config,
        overwrite=args.overwrite,
        progress=not args.quiet,
        sep=args.sep,
        labels_path=args.labels,
        id_col=args.id_col,
        split=args.split,
        task_kinds=dict(args.task or ()),
    )
    print(format_manifest(manifest, args.out))
    return 0


def task_kind(text: str) -> tuple[str, str]:
    """``"active=classification"`` -> ``("active", "classification")``."""
    name, _, kind = text.partition("=")
    if not name.strip() or not kind.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=KIND (e.g. active=classification), got {text!r}")
    return name.strip(), kind.strip()


def _add_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, nargs="?", default=DEFAULT_DATA_DIR, help="a prepared dataset")
    parser.add_argument("--json", action="store_true", help="print the raw manifest as JSON")
    parser.add_argument(
        "--verify", action="store_true", help="recompute every file's checksum (exit status 1 on a mismatch)"
    )


def _run_info(args: argparse.Namespace) -> int:
    from ml_patterns.molecules.prepare import read_manifest, verify_checksums

    manifest = read_manifest(args.dir)
    print(json.dumps(manifest, indent=1) if args.json else format_manifest(manifest, args.dir))
    if args.verify:
        bad = verify_checksums(args.dir)
        if bad:
            print(f"checksum mismatch in {len(bad)} file(s): {', '.join(bad)}", file=sys.stderr)
            return 1
        print(f"checksums: all {len(manifest['checksums'])} files match")
    return 0


def format_manifest(manifest: dict, root: Path) -> str:
    counts, splits, lengths = manifest["counts"], manifest["splits"], manifest["sequence_length"]
    lines = [
        f"dataset   {root}",
        f"source    {manifest['source']['name']} ({manifest['source']['path']})",
        f"molecules {counts['molecules']} kept of {counts['rows_read']} rows, {counts['skipped']} skipped",
        "splits    "
        + ", ".join(f"{k} {v}" for k, v in splits.items())
        + f" ({manifest.get('split_mode', 'random')}, seed {manifest['config']['seed']})",
        f"vocab     {manifest['vocab_size']} tokens; sequence length min {lengths['min']}, "
        f"mean {lengths['mean']:.1f}, max {lengths['max']} (with BOS/EOS)",
        f"targets   ({manifest['statistics_from']})",
    ]
    for name, stats in manifest["targets"].items():
        labelled = stats.get("labelled")  # datasets prepared before missing labels were kept have none
        coverage = f"  labelled {sum(labelled.values())}" if labelled else ""
        if stats.get("task") == "classification":
            per_class = "/".join(str(n) for n in stats["class_counts_train"])
            lines.append(f"  {name:<12} classification, {stats['classes']} classes (train rows {per_class}){coverage}")
        else:
            lines.append(f"  {name:<12} mean {stats['mean']:10.4f}  std {stats['std']:10.4f}{coverage}")
    for row in manifest["skipped"][:10]:
        lines.append(f"skipped   line {row['line']}: {row['reason']} ({row['smiles'][:40]})")
    if counts["skipped"] > 10:
        lines.append(f"skipped   ... and {counts['skipped'] - 10} more (see manifest.json)")
    labels = manifest.get("labels")  # a joined label file
    if labels:
        lines.append(
            f"labels    {labels['path']} on {labels['id_col']!r}: {labels['labelled_molecules']} molecules labelled, "
            f"{labels['molecules_without_label']} without a label row (dropped), "
            f"{labels['labels_without_molecule']} label rows without a molecule"
        )
    duplicates = manifest.get("duplicates")  # datasets prepared before it was counted have none
    if duplicates and duplicates["rows"]:
        lines.append(
            f"duplicates {duplicates['rows']} rows repeat a molecule, {duplicates['conflicting']} with other labels"
            + (" (see manifest.json)" if duplicates["conflicting"] else "")
        )
    return "\n".join(printable(line) for line in lines)  # data may hold terminal escapes


COMMANDS = {
    "prepare": (_add_prepare, _run_prepare, "build the lazy on-disk dataset (default: RDKit's NCI set)"),
    "info": (_add_info, _run_info, "print a prepared dataset's manifest"),
}
