"""``ml-patterns compare`` (``compare_command``), ``parity``, ``bench`` and ``convert``: the
subcommands that load a backend, each inside its ``run`` so that the others start without torch or jax."""

from __future__ import annotations

import argparse
from pathlib import Path

from ml_patterns.errors import UsageError
from ml_patterns_app.cli.arguments import DEFAULT_DATA_DIR, dataset_argument, non_negative_int, positive_int
from ml_patterns_app.cli.compare_command import add_compare_arguments, run_compare_command
from ml_patterns_app.porting.command import add_port_arguments, check_port_arguments


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
        "--torch",
        metavar="MODULE:FACTORY",
        help="your torch model: a function returning a torch.nn.Module (MODULE a dotted module or a .py file)",
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
        add_compare_arguments,
        run_compare_command,
        "train one model in PyTorch and in JAX from the same start (ours, or your pair: --torch/--jax): "
        "parity, metrics, speed",
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
