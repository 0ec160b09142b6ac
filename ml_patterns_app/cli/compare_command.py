"""``ml-patterns compare``: its arguments, and the settings, workload and contenders they make
(``ml_patterns_app.compare`` runs it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ml_patterns.errors import UsageError
from ml_patterns_app.cli.arguments import DEFAULT_DATA_DIR, dataset_argument, non_negative_int, positive_int
from ml_patterns_app.porting.command import add_port_arguments


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    from ml_patterns.optim import OPTIMIZERS
    from ml_patterns_app.compare.settings import (
        CONTENDERS,
        DEFAULT_CONTENDERS,
        DEVICES,
        MODELS,
        PRECISIONS,
        CompareSettings,
    )

    defaults = CompareSettings()
    # The settings' flags default to None (the help names the default): a flag given overrides --config.
    parser.add_argument(
        "--data",
        default=None,
        help=f"a prepared dataset (default: {DEFAULT_DATA_DIR}, prepared there if missing); with --torch/--jax: "
        "MODULE:FACTORY, a function returning your batches (an iterable of dicts of numpy arrays, iterated "
        "once per epoch)",
    )
    parser.add_argument(
        "--model", choices=MODELS, default=None, help=f"the molecule model to train (default: {defaults.model})"
    )
    parser.add_argument(
        "--epochs", type=positive_int, default=None, help=f"training epochs (default: {defaults.epochs})"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=None, help=f"molecules per batch (default: {defaults.batch_size})"
    )
    parser.add_argument(
        "--max-train-molecules",
        type=non_negative_int,
        default=None,
        help="train on the first N training molecules only (default: 0, all of them)",
    )
    parser.add_argument(
        "--max-eval-molecules",
        type=non_negative_int,
        default=None,
        help="validate and test on the first N molecules of each split only (default: 0, all of them)",
    )
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=None,
        help=f"the optimizer, the same on both sides (ml_patterns.optim; default: {defaults.optimizer_name})",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"the peak learning rate: linear warmup, then cosine decay (default: {defaults.learning_rate:g})",
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help=f"weight decay of adamw, adam_l2 and sgd; 0 for adam (default: {defaults.weight_decay:g})",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=None,
        help=f"seeds the weights and the batch order (default: {defaults.seed})",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a JSON object of compare's settings (model sizes d_model, n_heads, n_layers, d_ff; optimizer_name, "
        "learning_rate, weight_decay, clip_grad_norm, warmup_fraction; seed, epochs...); flags given override it",
    )
    parser.add_argument(
        "--contenders",
        default=",".join(DEFAULT_CONTENDERS),
        help=f"the runs timed, comma-separated, of {','.join(CONTENDERS)}: eager torch and jax.jit are judged for "
        "agreement; compile adds torch.compile (its compile time apart, judged against eager)",
    )
    # Your own pair instead of our molecule models.
    parser.add_argument(
        "--torch",
        metavar="MODULE:FACTORY",
        help="your torch model: a function returning a torch.nn.Module with compute_loss(batch) (MODULE: "
        "importable from the working directory, or a .py file)",
    )
    parser.add_argument(
        "--jax", metavar="MODULE:FACTORY", help="its NNX port: a function returning an nnx.Module with compute_loss"
    )
    parser.add_argument("--val", metavar="MODULE:FACTORY", help="with --torch/--jax: your validation batches")
    parser.add_argument(
        "--torch-loss", metavar="MODULE:FN", help="with --torch: loss(model, batch) -> scalar, instead of compute_loss"
    )
    parser.add_argument(
        "--jax-loss", metavar="MODULE:FN", help="with --jax: loss(model, batch) -> scalar, instead of compute_loss"
    )
    add_port_arguments(parser)
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
        default=None,
        help=f"K >= 3 reruns of torch with every weight moved one ulp at random after each step: the noise floor "
        f"is the largest of their divergences (docs/PARITY.md; default: {defaults.floor_runs})",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="float32, or bf16-mixed: both backends, and torch's reruns measuring the noise floor, train with "
        "float32 master weights and bfloat16 matmuls; the reruns start one float32 ulp off as in float32, the floor "
        "is at least half a bfloat16 eps of the loss, the final test metrics are reported, not judged, and each "
        "backend also trains in float32 for the report's bf16-mixed vs float32 distances (docs/PRECISION.md; "
        f"default: {defaults.precision})",
    )
    parser.add_argument(
        "--max-buckets",
        type=positive_int,
        default=None,
        help="at most N padded lengths, fitted to the run's batches: each is one more jax.jit program per step "
        f"function; fewer pad more (default: {defaults.max_buckets})",
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


# flag -> the CompareSettings field it sets
_SETTINGS_FLAGS = {
    "model": "model",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "max_train_molecules": "max_train_molecules",
    "max_eval_molecules": "max_eval_molecules",
    "optimizer": "optimizer_name",
    "lr": "learning_rate",
    "weight_decay": "weight_decay",
    "seed": "seed",
    "floor_runs": "floor_runs",
    "precision": "precision",
    "max_buckets": "max_buckets",
    "threads": "threads",
}
# The molecule workload's own flags: refused with your pair.
_MOLECULE_FLAGS = ("model", "batch_size", "max_train_molecules", "max_eval_molecules", "max_buckets", "random_batches")


def compare_settings(args: argparse.Namespace):
    """``CompareSettings`` from ``--config`` (if given) and the flags given, which override it."""
    from ml_patterns_app.compare.settings import CompareSettings, settings_from_json

    given = {field: getattr(args, flag) for flag, field in _SETTINGS_FLAGS.items() if getattr(args, flag) is not None}
    if args.random_batches:
        given["group_by_length"] = False
    if args.config is not None:
        return settings_from_json(args.config, **given)
    return CompareSettings(**given)


def _pair_spec(args: argparse.Namespace):
    """Your pair from ``--torch``/``--jax`` (None without them); refuses the molecule workload's flags."""
    from ml_patterns_app.compare.pair import PairSpec
    from ml_patterns_app.porting.command import check_port_arguments, parse_pairs

    if not (args.torch or args.jax):
        used = [f"--{name.replace('_', '-')}" for name in ("val", "torch_loss", "jax_loss") if getattr(args, name)]
        if used:
            raise UsageError(f"{', '.join(used)} go(es) with --torch and --jax (your own models)")
        check_port_arguments(args)
        return None
    if not (args.torch and args.jax):
        raise UsageError("--torch and --jax go together: MODULE:FACTORY of your torch model and of its NNX port")
    if args.data is None:
        raise UsageError("--torch/--jax need --data MODULE:FACTORY: a function returning your training batches")
    used = [f"--{flag.replace('_', '-')}" for flag in _MOLECULE_FLAGS if getattr(args, flag)]
    if args.devices > 1:
        used.append("--devices")
    if used:
        raise UsageError(
            f"{', '.join(used)}: the molecule workload's, not for --torch/--jax (--data makes the batches)"
        )
    return PairSpec(
        torch=args.torch,
        jax=args.jax,
        data=args.data,
        val=args.val,
        torch_loss=args.torch_loss,
        jax_loss=args.jax_loss,
        rules=tuple(args.rules),
        pairs=parse_pairs(args.pairs),
        ignore=tuple(args.ignore),
    )


def run_compare_command(args: argparse.Namespace) -> int:
    from ml_patterns.machine import cpu_count
    from ml_patterns.verdict import ENSEMBLE_SIZE
    from ml_patterns_app.compare.launch import WorkerFailed
    from ml_patterns_app.compare.runner import check_compile_cache, default_compile_cache, run_compare

    pair = _pair_spec(args)
    settings = compare_settings(args)
    if settings.floor_runs < ENSEMBLE_SIZE:
        raise UsageError(f"--floor-runs {settings.floor_runs}: the floor needs at least {ENSEMBLE_SIZE} reruns")
    available = cpu_count()
    if args.threads and args.threads > available:
        raise UsageError(f"--threads {args.threads}: this process may use {available} CPUs")
    contenders = tuple(name.strip() for name in args.contenders.split(",") if name.strip())
    cache = None if args.no_compile_cache else default_compile_cache()
    if cache is not None:
        check_compile_cache(cache)
    data = None if pair is not None else dataset_argument(None if args.data is None else Path(args.data))
    try:
        return run_compare(settings, data, args.out, args.device, args.devices, cache, pair=pair, contenders=contenders)
    except WorkerFailed as error:  # the worker printed its own traceback above
        print(f"ml-patterns compare: {error}", file=sys.stderr)
        return 1
