"""The ``ml-patterns`` command line.

Each subcommand is an ``(add_arguments, run, help)`` triple registered in ``SUBCOMMANDS``. This
module is the dispatch: a subcommand that needs a backend imports it inside ``run``, so ``prepare``
and ``info`` start without loading torch or jax.

Errors: the user's mistakes (``USER_ERRORS``: a bad flag value, a missing or corrupt dataset or
checkpoint, an output that exists) print one line (``ml_patterns.errors.cli_message``: the flag's
wording) and exit with status 2; anything else is a bug and keeps its traceback. Ctrl-C exits with
status 130, SIGTERM with 143, each after one line; a closed output pipe (``| head``) quietly with 141
(``ml_patterns_app.process``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ml_patterns import __version__
from ml_patterns.checkpoint import CheckpointError, WeightMismatchError
from ml_patterns.data import DatasetError
from ml_patterns.errors import UsageError, cli_message
from ml_patterns.molecules.tokenizer import TokenizationError
from ml_patterns_app.porting.command import add_port_arguments, check_port_arguments
from ml_patterns_app.process import Terminated, command_process, quiet_broken_pipe

DEFAULT_DATA_DIR = Path("data/nci")
USER_ERRORS = (
    UsageError,
    DatasetError,
    CheckpointError,
    WeightMismatchError,
    TokenizationError,
    FileNotFoundError,
    FileExistsError,
)


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


# -- prepare / info: the dataset -------------------------------------------------------------
def _add_prepare(parser: argparse.ArgumentParser) -> None:
    from ml_patterns.molecules.config import DEFAULT_RDKIT_PROPERTIES, RDKIT_PROPERTIES, PrepareConfig

    defaults = PrepareConfig()
    parser.add_argument("--out", type=Path, default=DEFAULT_DATA_DIR, help="output directory")
    parser.add_argument(
        "--csv",
        type=Path,
        default=None,
        help="your own CSV instead of the embedded RDKit NCI set (needs --target-cols)",
    )
    parser.add_argument("--smiles-col", default="smiles", help="SMILES column of --csv")
    parser.add_argument("--target-cols", default=None, help="comma-separated label columns of --csv, e.g. logS,pKa")
    parser.add_argument(
        "--rdkit-properties",
        type=rdkit_properties,
        default=None,
        help=f"comma-separated RDKit descriptors to add as targets, of: {','.join(RDKIT_PROPERTIES)}; "
        f"'' for none (default: {','.join(DEFAULT_RDKIT_PROPERTIES)} for the embedded set, none for --csv)",
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
        raise UsageError("--csv needs --target-cols (the label columns to train on)")
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
        target_cols=args.target_cols.split(",") if args.target_cols else None,
        config=config,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(format_manifest(manifest, args.out))
    return 0


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
        "splits    " + ", ".join(f"{k} {v}" for k, v in splits.items()) + f" (seed {manifest['config']['seed']})",
        f"vocab     {manifest['vocab_size']} tokens; sequence length min {lengths['min']}, "
        f"mean {lengths['mean']:.1f}, max {lengths['max']} (with BOS/EOS)",
        f"targets   ({manifest['statistics_from']})",
    ]
    for name, stats in manifest["targets"].items():
        lines.append(f"  {name:<12} mean {stats['mean']:10.4f}  std {stats['std']:10.4f}")
    for row in manifest["skipped"][:10]:
        lines.append(f"skipped   line {row['line']}: {row['reason']} ({row['smiles'][:40]})")
    if counts["skipped"] > 10:
        lines.append(f"skipped   ... and {counts['skipped'] - 10} more (see manifest.json)")
    duplicates = manifest.get("duplicates")  # datasets prepared before it was counted have none
    if duplicates and duplicates["rows"]:
        lines.append(
            f"duplicates {duplicates['rows']} rows repeat a molecule, {duplicates['conflicting']} with other labels"
            + (" (see manifest.json)" if duplicates["conflicting"] else "")
        )
    return "\n".join(lines)


# -- compare / parity / bench: the backends ---------------------------------------------------
def dataset_argument(data: Path | None) -> Path:
    """``--data`` of compare and bench: a given path must be a prepared dataset (a typo is an error,
    not a reason to prepare one there); without ``--data``, the default one (prepared if missing)."""
    if data is None:
        return DEFAULT_DATA_DIR
    if not (data / "manifest.json").is_file():
        problem = "does not exist" if not data.exists() else "is not a prepared dataset (it has no manifest.json)"
        raise UsageError(
            f"--data {data} {problem}; prepare it with `ml-patterns prepare --out {data}`, or leave --data out "
            f"for the default dataset ({DEFAULT_DATA_DIR}, prepared there on first use)"
        )
    return data


def _add_compare(parser: argparse.ArgumentParser) -> None:
    from ml_patterns_app.compare.settings import DEVICES, MODELS, CompareSettings

    defaults = CompareSettings()
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"a prepared dataset (default: {DEFAULT_DATA_DIR}, prepared there if missing)",
    )
    parser.add_argument("--model", choices=MODELS, default=defaults.model, help="the molecule model to train")
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs, help="training epochs")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="molecules per batch")
    parser.add_argument(
        "--max-train-molecules",
        type=non_negative_int,
        default=defaults.max_train_molecules,
        help="train on the first N training molecules only (0: all of them)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto: a CUDA GPU when present, else the CPU; gpu: an error without one",
    )
    parser.add_argument(
        "--devices",
        type=positive_int,
        default=1,
        help="N > 1: also train data-parallel on N devices (torch DDP processes, JAX sharded; simulated "
        "on a CPU) and check each against its one-device run (docs/DISTRIBUTED.md)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPUs for each backend's worker, torch and XLA alike (default: every CPU this process may use; "
        "on a busy machine 1 is faster and steadier)",
    )
    parser.add_argument(
        "--max-buckets",
        type=positive_int,
        default=defaults.max_buckets,
        help="at most N padded lengths, fitted to the run's batches: each is one more jax.jit program per step "
        "function; fewer pad more",
    )
    parser.add_argument(
        "--random-batches",
        action="store_true",
        help="draw batches at random instead of grouping molecules of similar length (3x the padding)",
    )
    parser.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="trace and compile every JAX program afresh instead of keeping them in ~/.cache/ml-patterns/jax "
        "and jax-traced beside it ($XDG_CACHE_HOME/ml-patterns/...), which must be writable by you alone",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/compare"),
        help="directory for report.md, results.json and the plots (replaced as a whole)",
    )


def _run_compare(args: argparse.Namespace) -> int:
    from bench.common import cpu_count
    from ml_patterns_app.compare.runner import WorkerFailed, check_cache_directories, default_compile_cache, run_compare
    from ml_patterns_app.compare.settings import CompareSettings

    settings = CompareSettings(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_train_molecules=args.max_train_molecules,
        group_by_length=not args.random_batches,
        max_buckets=args.max_buckets,
        threads=args.threads or 0,
    )
    available = cpu_count()
    if args.threads and args.threads > available:
        raise UsageError(f"--threads {args.threads}: this process may use {available} CPUs")
    cache = None if args.no_compile_cache else default_compile_cache()
    if cache is not None:
        check_cache_directories(cache)
    try:
        return run_compare(settings, dataset_argument(args.data), args.out, args.device, args.devices, cache)
    except WorkerFailed as error:  # the worker printed its own traceback above
        print(f"ml-patterns compare: {error}", file=sys.stderr)
        return 1


def _add_parity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA_DIR, help="a prepared dataset (its val split is used)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="JSON object of ModelConfig fields overriding the dataset's defaults "
        '(with "architecture": check that model only; default: both models, default sizes)',
    )
    parser.add_argument("--batch-size", type=positive_int, default=16, help="molecules in the compared batch")
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seeds the weights, the batch and its token masks"
    )
    # Your own port instead of our molecule models (ml_patterns_app.porting, docs/PORTING.md).
    parser.add_argument(
        "--torch", metavar="MODULE:FACTORY", help="your torch model: a function returning a torch.nn.Module"
    )
    parser.add_argument("--jax", metavar="MODULE:FACTORY", help="its NNX port: a function returning an nnx.Module")
    parser.add_argument(
        "--inputs",
        type=Path,
        help="with --torch/--jax: a .npz of the forward's arguments (unnamed arrays in order, named ones by name; "
        "without it: the weight mapping only)",
    )
    add_port_arguments(parser)


def _run_parity(args: argparse.Namespace) -> int:
    if args.torch or args.jax:
        if not (args.torch and args.jax):
            raise UsageError("--torch and --jax go together: MODULE:FACTORY of your torch model and of its NNX port")
        from ml_patterns_app.porting.command import run_user_parity

        return run_user_parity(
            args.torch, args.jax, args.inputs, rules=args.rules, pairs=args.pairs, ignore=args.ignore
        )
    if args.inputs is not None:
        raise UsageError("--inputs goes with --torch and --jax (your own models)")
    check_port_arguments(args)
    from ml_patterns_app.parity_report import run

    return run(args.data, args.config, args.batch_size, args.seed)


def _add_bench(parser: argparse.ArgumentParser) -> None:
    from bench.runner import BENCHMARKS, QUICK_BENCHMARKS  # framework-free
    from ml_patterns.parity import PRECISIONS

    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        default=None,
        metavar="NAME",
        help=f"run only this benchmark (repeatable), one of: {', '.join(BENCHMARKS)} "
        "(default: all; with --quick: " + ", ".join(QUICK_BENCHMARKS) + ")",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smallest sizes, few repeats, no torch.compile: a smoke test of a few minutes",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "gpu", "all"),
        default="all",
        help="cpu, gpu (a CUDA GPU; an error if there is none) or all devices present",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPUs for both torch and XLA (default: every CPU this process may use)",
    )
    parser.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default="float32",
        help="float32 matmul precision on both sides: "
        + "; ".join(f"{name}: {summary}" for name, summary in PRECISIONS.items()),
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"a prepared dataset (default: {DEFAULT_DATA_DIR}, prepared there if missing)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/bench"), help="where bench.json, bench.md and bench.png go"
    )


def _run_bench(args: argparse.Namespace) -> int:
    from bench.runner import run_benchmarks

    args.data = dataset_argument(args.data)
    return run_benchmarks(args)


def _add_convert(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="a file written by torch.save(model.state_dict()) (e.g. IN.pt)")
    parser.add_argument("destination", type=Path, help="the portable checkpoint to write (e.g. OUT.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing destination")


def _run_convert(args: argparse.Namespace) -> int:
    from torch_impl.state import convert_torch_file

    if args.destination.exists() and not args.overwrite:
        raise FileExistsError(f"{args.destination} already exists (pass --overwrite to replace it)")
    written = convert_torch_file(args.source, args.destination)
    print(
        f"wrote {written}: the state_dict of {args.source} as a portable checkpoint; load it into a model you "
        "build with model.load(path), on either backend (it holds no model config)"
    )
    return 0


SUBCOMMANDS = {
    "compare": (
        _add_compare,
        _run_compare,
        "train one model in PyTorch and in JAX from the same start: parity, metrics, speed",
    ),
    "prepare": (_add_prepare, _run_prepare, "build the lazy on-disk dataset (default: RDKit's NCI set)"),
    "info": (_add_info, _run_info, "print a prepared dataset's manifest"),
    "bench": (_add_bench, _run_bench, "benchmark torch eager, torch.compile and jax.jit on each workload"),
    "parity": (
        _add_parity,
        _run_parity,
        "compare the molecule models across torch and JAX: outputs, losses, gradients",
    ),
    "convert": (
        _add_convert,
        _run_convert,
        "convert a torch.save(state_dict) file into a portable checkpoint both backends read",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ml-patterns", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ml-patterns {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, _, help_text) in SUBCOMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, run, _ = SUBCOMMANDS[args.command]
    prefix = f"ml-patterns {args.command}"
    try:
        with command_process(prefix):
            return run(args)
    except USER_ERRORS as error:
        print(f"{prefix}: error: {cli_message(error)}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"\n{prefix}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"\n{prefix}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        quiet_broken_pipe()
        return 141


if __name__ == "__main__":
    sys.exit(main())
