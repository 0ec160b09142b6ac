"""``ml-patterns parity --torch MODULE:FACTORY --jax MODULE:FACTORY [--inputs FILE]``: your own port.

Each factory is called without arguments and returns the model: a ``torch.nn.Module`` and an
``nnx.Module`` (a linen model wrapped with ``nnx.bridge.ToNNX``). The command prints the weight
mapping, copies the torch weights into the NNX model, and with ``--inputs`` compares every layer and
names the first that diverges. Exit status 0 when they agree. ``--inputs`` is a ``.npy`` of the only
argument, or a ``.npz``: arrays saved without a name (``np.savez(f, ids, mask)``: ``arr_0``,
``arr_1``...) are the positional arguments in order, named ones (``np.savez(f, attention_mask=m)``)
keyword arguments. ``--rules MODULE:NAME`` (a ``Rule`` or a list of them), ``--pairs TORCH=NNX`` and
``--ignore NAME``, each repeatable, are ``transfer_weights``' ``rules``, ``pairs`` and ``ignore``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ml_patterns.errors import UsageError


def add_port_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that shape the mapping of ``--torch``/``--jax`` (their own options stay in the CLI)."""
    parser.add_argument(
        "--rules",
        action="append",
        default=[],
        metavar="MODULE:NAME",
        help="with --torch/--jax: a porting Rule (or a list of them) for custom layers; repeatable",
    )
    parser.add_argument(
        "--pairs",
        action="append",
        default=[],
        metavar="TORCH=NNX",
        help="with --torch/--jax: pair the torch layer TORCH with the NNX layer NNX (dotted paths); repeatable",
    )
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="NAME",
        help="with --torch/--jax: a torch or NNX tensor or module path to leave out; repeatable",
    )


def check_port_arguments(args: argparse.Namespace) -> None:
    """Refuses the mapping options without ``--torch``/``--jax``."""
    used = [f"--{name}" for name in ("rules", "pairs", "ignore") if getattr(args, name, None)]
    if used and not (args.torch and args.jax):
        raise UsageError(f"{', '.join(used)} go(es) with --torch and --jax (your own models)")


def run_user_parity(
    torch_spec: str,
    jax_spec: str,
    inputs: Path | None,
    *,
    rules: Sequence[str] = (),
    pairs: Sequence[str] = (),
    ignore: Sequence[str] = (),
) -> int:
    import torch
    from flax import nnx

    from jax_impl import runtime as jax_runtime
    from ml_patterns_app.porting.forward import compare_forward
    from ml_patterns_app.porting.transfer import transfer_weights
    from torch_impl import runtime as torch_runtime

    for runtime in (torch_runtime, jax_runtime):
        runtime.set_precision("float32")  # full float32 on both sides, as the policy's tolerances assume
    from ml_patterns_app.porting.trees import PortingError

    mapping = {"rules": load_rules(rules), "pairs": parse_pairs(pairs), "ignore": list(ignore)}
    torch_model = build_model(torch_spec, "--torch", torch.nn.Module, "a torch.nn.Module")
    nnx_model = build_model(jax_spec, "--jax", nnx.Module, "a flax.nnx.Module")
    arguments = load_inputs(inputs) if inputs is not None else None
    try:
        weight_map = transfer_weights(torch_model, nnx_model, dry_run=True, **mapping)
    except PortingError as error:  # what the factory returned is not what can be compared
        raise UsageError(f"--jax {jax_spec!r}: {error}") from None
    print(weight_map, end="\n\n")
    if weight_map.problems:
        print("The weights cannot be transferred: see the problems above (--rules, --pairs, --ignore).")
        return 1
    transfer_weights(torch_model, nnx_model, **mapping)
    if arguments is None:
        print(
            "Weights transferred. Pass --inputs FILE (a .npz of the forward's arguments) to compare "
            "every layer's output."
        )
        return 0
    positional, keywords = arguments
    report = compare_forward(torch_model, nnx_model, positional, kwargs=keywords, **mapping)
    print(report)
    return 0 if report.passed else 1


def load_factory(spec: str, flag: str) -> Callable[[], object]:
    """``"package.module:function"`` -> the function."""
    factory = _load(spec, flag, "FACTORY", "mypackage.models:build_model", "function")
    if not callable(factory):
        raise UsageError(f"{flag} {spec!r}: {spec.partition(':')[0]} has no function {spec.partition(':')[2]!r}")
    return factory


def _load(spec: str, flag: str, what: str, example: str, noun: str):
    """``"package.module:name"`` -> the module's attribute ``name`` (a ``noun``)."""
    module_name, colon, name = spec.partition(":")
    if not colon or not module_name or not name:
        raise UsageError(f"{flag} {spec!r}: expected MODULE:{what}, e.g. {example}")
    # As `python -m` does: a module in the working directory imports without PYTHONPATH=. (the
    # `ml-patterns` script's own sys.path holds only its install folder).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise UsageError(
            f"{flag} {spec!r}: cannot import {module_name!r} ({error}); run from its directory, or put that "
            "directory on PYTHONPATH"
        ) from None
    value = getattr(module, name, None)
    if value is None:
        raise UsageError(f"{flag} {spec!r}: {module_name} has no {noun} {name!r}")
    return value


_POSITIONAL = re.compile(r"arr_(\d+)")  # the names np.savez gives arrays passed without one


def load_inputs(path: Path) -> tuple[tuple[np.ndarray, ...], dict[str, np.ndarray]]:
    """(positional arguments, keyword arguments) from a ``.npy`` (the only positional one) or a
    ``.npz`` (``arr_0``, ``arr_1``... in order; other names by name); never unpickles."""
    if path.suffix not in (".npz", ".npy"):
        raise UsageError(f"--inputs {path}: expected a .npz (the forward's arguments) or a .npy file")
    try:
        if path.suffix == ".npy":
            return (np.load(path, allow_pickle=False),), {}
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:  # object arrays (they would need unpickling), or not a numpy file
        raise UsageError(f"--inputs {path}: cannot read it as numpy arrays without unpickling ({error})") from None
    numbered = sorted((int(m.group(1)), name) for name in arrays if (m := _POSITIONAL.fullmatch(name)))
    if [index for index, _ in numbered] != list(range(len(numbered))):
        raise UsageError(f"--inputs {path}: positional arrays {[n for _, n in numbered]} skip a number")
    positional = tuple(arrays.pop(name) for _, name in numbered)
    return positional, arrays


def load_rules(specs: Sequence[str]) -> list:
    """``--rules MODULE:NAME`` -> the ``Rule``s (a name may hold one or a list)."""
    from ml_patterns_app.porting.rules import Rule

    found = []
    for spec in specs:
        value = _load(spec, "--rules", "NAME", "mypackage.porting:ATTENTION_RULE", "rule")
        rules = list(value) if isinstance(value, (list, tuple)) else [value]
        if not rules or not all(isinstance(rule, Rule) for rule in rules):
            raise UsageError(f"--rules {spec!r}: expected a porting Rule or a list of them, got {type(value).__name__}")
        found += rules
    return found


def parse_pairs(specs: Sequence[str]) -> dict[str, str]:
    """``--pairs TORCH=NNX`` -> ``{torch_path: nnx_path}``."""
    pairs = {}
    for spec in specs:
        torch_path, equals, nnx_path = spec.partition("=")
        if not equals or not torch_path or not nnx_path:
            raise UsageError(f"--pairs {spec!r}: expected TORCH_PATH=NNX_PATH, e.g. blocks.0.attn=layers.0.attention")
        pairs[torch_path] = nnx_path
    return pairs


def load_callable(spec: str, flag: str) -> Callable:
    """The function ``spec`` names (``MODULE:NAME``, MODULE a dotted module or a ``.py`` file)."""
    module_name, _, name = spec.rpartition(":")
    if not module_name.endswith(".py"):
        return load_factory(spec, flag)  # the working directory on the import path, as for parity --torch
    path = Path(module_name).resolve()
    if not path.is_file():
        raise UsageError(f"{flag} {spec!r}: no file {path}")
    # The script's own name, so that its classes are the same in every import of it; never
    # "__main__", so that its `if __name__ == "__main__":` block does not run here.
    key = "ml_patterns_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module = sys.modules.get(key)
    if module is None:
        # As `python FILE` does: the file's folder on the import path, for its own imports.
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        loader = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(loader)
        sys.modules[key] = module
        loader.loader.exec_module(module)
    found = getattr(module, name, None)
    if not callable(found):
        raise UsageError(f"{flag} {spec!r}: {path.name} has no function {name!r}")
    return found


def build_model(spec: str, flag: str, kind: type, description: str):
    """The model ``spec``'s factory returns (``load_callable``), refused unless a ``kind``."""
    model = load_callable(spec, flag)()
    if not isinstance(model, kind):
        raise UsageError(f"{flag} {spec!r} returned a {type(model).__name__}, not {description}")
    return model
