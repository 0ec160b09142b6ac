"""``ml-patterns compare``, ``parity``, ``bench`` and ``convert``: the subcommands that load a
backend, each inside its ``run`` so that the others start without torch or jax."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ml_patterns.errors import UsageError
from ml_patterns_app.cli.arguments import DEFAULT_DATA_DIR, dataset_argument, non_negative_int, positive_int
from ml_patterns_app.porting.command import add_port_arguments, check_port_arguments


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
        "--floor-runs",
        type=positive_int,
        default=defaults.floor_runs,
        help="K >= 3 reruns of torch with every weight moved one ulp at random after each step: the noise floor is "
        "the largest of their divergences (docs/PARITY.md)",
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
        help="compile every JAX program afresh instead of keeping the compiled programs in "
        "~/.cache/ml-patterns/jax ($XDG_CACHE_HOME/ml-patterns/jax), which must be writable by you alone",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/compare"),
        help="directory for report.md, results.json and the plots (replaced as a whole)",
    )


def _run_compare(args: argparse.Namespace) -> int:
    from ml_patterns.machine import cpu_count
    from ml_patterns.verdict import ENSEMBLE_SIZE
    from ml_patterns_app.compare.runner import WorkerFailed, check_compile_cache, default_compile_cache, run_compare
    from ml_patterns_app.compare.settings import CompareSettings

    settings = CompareSettings(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_train_molecules=args.max_train_molecules,
        group_by_length=not args.random_batches,
        max_buckets=args.max_buckets,
        threads=args.threads or 0,
        floor_runs=args.floor_runs,
    )
    if args.floor_runs < ENSEMBLE_SIZE:
        raise UsageError(f"--floor-runs {args.floor_runs}: the floor needs at least {ENSEMBLE_SIZE} reruns")
    available = cpu_count()
    if args.threads and args.threads > available:
        raise UsageError(f"--threads {args.threads}: this process may use {available} CPUs")
    cache = None if args.no_compile_cache else default_compile_cache()
    if cache is not None:
        check_compile_cache(cache)
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
    from ml_patterns_app.porting.parity_report import run

    return run(args.data, args.config, args.batch_size, args.seed)


def _add_bench(parser: argparse.ArgumentParser) -> None:
    from ml_patterns_bench.common import BENCH_PRECISIONS
    from ml_patterns_bench.runner import BENCHMARKS, QUICK_BENCHMARKS  # framework-free

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
        choices=sorted(BENCH_PRECISIONS),
        default="float32",
        help="precision on both sides: "
        + "; ".join(f"{name}: {summary}" for name, summary in BENCH_PRECISIONS.items()),
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
    from ml_patterns_bench.runner import run_benchmarks

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


COMMANDS = {
    "compare": (
        _add_compare,
        _run_compare,
        "train one model in PyTorch and in JAX from the same start: parity, metrics, speed",
    ),
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
