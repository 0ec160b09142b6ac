"""The ``ml-patterns`` command line.

Each subcommand is a ``(add_arguments, run)`` pair registered in ``SUBCOMMANDS``. This module is the
dispatch: subcommands that need a backend import it inside ``run``, so ``prepare`` and ``info``
start without loading torch or jax.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ml_patterns import __version__

DEFAULT_DATA_DIR = Path("data/nci")


def _add_prepare(parser: argparse.ArgumentParser) -> None:
    from ml_patterns.molecules.config import PrepareConfig

    defaults = PrepareConfig()
    parser.add_argument("--out", type=Path, default=DEFAULT_DATA_DIR, help=f"output directory (default: {DEFAULT_DATA_DIR})")
    parser.add_argument("--csv", type=Path, help="your own CSV instead of the embedded RDKit NCI set")
    parser.add_argument("--smiles-col", default="smiles", help="SMILES column of --csv (default: smiles)")
    parser.add_argument("--target-cols", help="comma-separated label columns of --csv, e.g. logS,pKa")
    parser.add_argument(
        "--rdkit-properties",
        default=None,
        help=f"comma-separated RDKit properties to add as targets (default: {','.join(defaults.rdkit_properties)} "
        "for the embedded set, none for --csv; '' for none)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="split seed")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    parser.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size, help="records per shard file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_prepare(args: argparse.Namespace) -> int:
    from ml_patterns.molecules.config import PrepareConfig
    from ml_patterns.molecules.prepare import prepare_dataset

    if args.rdkit_properties is None:
        properties = PrepareConfig().rdkit_properties if args.csv is None else ()
    else:
        properties = tuple(p for p in args.rdkit_properties.split(",") if p)
    if args.csv is not None and not args.target_cols:
        raise SystemExit("ml-patterns prepare: --csv needs --target-cols")
    config = PrepareConfig(
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        shard_size=args.shard_size,
        rdkit_properties=properties,
    )
    manifest = prepare_dataset(
        args.out,
        csv_path=args.csv,
        smiles_col=args.smiles_col,
        target_cols=args.target_cols.split(",") if args.target_cols else None,
        config=config,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(format_manifest(manifest, args.out))
    return 0


def _add_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, nargs="?", default=DEFAULT_DATA_DIR, help="a prepared dataset")
    parser.add_argument("--json", action="store_true", help="print the raw manifest")
    parser.add_argument("--verify", action="store_true", help="recompute and check every file's checksum")


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
    counts, splits = manifest["counts"], manifest["splits"]
    lines = [
        f"dataset   {root}",
        f"source    {manifest['source']['name']} ({manifest['source']['path']})",
        f"molecules {counts['molecules']} kept of {counts['rows_read']} rows, {counts['skipped']} skipped",
        "splits    " + ", ".join(f"{k} {v}" for k, v in splits.items()) + f" (seed {manifest['config']['seed']})",
        f"vocab     {manifest['vocab_size']} tokens; sequence length min {manifest['sequence_length']['min']}, "
        f"mean {manifest['sequence_length']['mean']:.1f}, max {manifest['sequence_length']['max']} (with BOS/EOS)",
        f"targets   ({manifest['statistics_from']})",
    ]
    for name, stats in manifest["targets"].items():
        lines.append(f"  {name:<12} mean {stats['mean']:10.4f}  std {stats['std']:10.4f}")
    for row in manifest["skipped"][:10]:
        lines.append(f"skipped   line {row['line']}: {row['reason']} ({row['smiles'][:40]})")
    if counts["skipped"] > 10:
        lines.append(f"skipped   ... and {counts['skipped'] - 10} more (see manifest.json)")
    return "\n".join(lines)


def _add_bench(parser: argparse.ArgumentParser) -> None:
    from bench.common import PRECISION_POLICIES  # framework-free

    parser.add_argument("--only", action="append", help="run only this benchmark (repeatable)")
    parser.add_argument("--quick", action="store_true",
                        help="smallest sizes, few repeats, no torch.compile: a smoke test, under 2 minutes")
    parser.add_argument("--device", choices=("cpu", "gpu", "all"), default="all",
                        help="cpu, gpu (a CUDA GPU; an error if there is none) or all devices present (default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for both torch and XLA (default: every CPU this process may use)")
    parser.add_argument("--precision", choices=sorted(PRECISION_POLICIES), default="float32",
                        help="float32 matmul precision on both sides: float32 (full, default) or tf32 (GPU)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="prepared dataset (prepared if missing)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="where bench.json, bench.md and bench.png go")


def _run_bench(args: argparse.Namespace) -> int:
    from bench.runner import run_benchmarks

    return run_benchmarks(args)


def _add_parity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="a prepared dataset (its val split is used)")
    parser.add_argument("--config", type=Path, help="JSON object of ModelConfig fields overriding the dataset's defaults "
                        "(with \"architecture\": check that model only)")
    parser.add_argument("--batch-size", type=int, default=16, help="molecules in the compared batch (default: 16)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights, the batch and its token masks")


def _run_parity(args: argparse.Namespace) -> int:
    from bench.parity_report import run

    return run(args)


def _add_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="prepared dataset (the default one is prepared if missing)")
    parser.add_argument("--model", choices=("multitask", "autoencoder"), default="multitask")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-train-molecules", type=int, default=0, help="use only the first N training molecules (0: all)")
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto", help="auto: a CUDA GPU when present")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="where report.md, results.json and the plots go")


def _run_compare(args: argparse.Namespace) -> int:
    from bench.compare import run_compare

    return run_compare(args)


SUBCOMMANDS = {
    "compare": (_add_compare, _run_compare, "train one model in PyTorch and in JAX from the same start: parity, metrics, speed"),
    "prepare": (_add_prepare, _run_prepare, "build the lazy on-disk dataset (default: RDKit's NCI set)"),
    "info": (_add_info, _run_info, "print a prepared dataset's manifest"),
    "bench": (_add_bench, _run_bench, "run the benchmarks in bench/"),
    "parity": (_add_parity, _run_parity, "compare the molecule models across torch and JAX: outputs, losses, gradients"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ml-patterns", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ml-patterns {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, _, help_text) in SUBCOMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, run, _ = SUBCOMMANDS[args.command]
    try:
        return run(args)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError, RuntimeError) as error:
        # Bad input: one clear line, no traceback.
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"ml-patterns {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
