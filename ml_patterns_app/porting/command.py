"""``ml-patterns parity --torch MODULE:FACTORY --jax MODULE:FACTORY [--inputs FILE]``: your own port.

Each factory is called without arguments and returns the model: a ``torch.nn.Module`` and an
``nnx.Module``. The command prints the weight mapping, copies the torch weights into the NNX model,
and with ``--inputs`` (a ``.npz`` of the forward's positional arguments, in order, or a ``.npy`` of
the only one) compares every layer and names the first that diverges. Exit status 0 when they agree.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ml_patterns.errors import UsageError


def run_user_parity(torch_spec: str, jax_spec: str, inputs: Path | None) -> int:
    import torch
    from flax import nnx

    from jax_impl import runtime as jax_runtime
    from ml_patterns_app.porting.forward import compare_forward
    from ml_patterns_app.porting.transfer import transfer_weights
    from torch_impl import runtime as torch_runtime

    for runtime in (torch_runtime, jax_runtime):
        runtime.set_precision("float32")  # full float32 on both sides, as the policy's tolerances assume
    torch_model = _build(torch_spec, "--torch", torch.nn.Module, "a torch.nn.Module")
    nnx_model = _build(jax_spec, "--jax", nnx.Module, "a flax.nnx.Module")
    arguments = load_inputs(inputs) if inputs is not None else None
    weight_map = transfer_weights(torch_model, nnx_model, dry_run=True)
    print(weight_map, end="\n\n")
    if weight_map.problems:
        print("The weights cannot be transferred: see the problems above.")
        return 1
    transfer_weights(torch_model, nnx_model)
    if arguments is None:
        print(
            "Weights transferred. Pass --inputs FILE (a .npz of the forward's positional arguments) to compare "
            "every layer's output."
        )
        return 0
    report = compare_forward(torch_model, nnx_model, arguments)
    print(report)
    return 0 if report.passed else 1


def load_factory(spec: str, flag: str) -> Callable[[], object]:
    """``"package.module:function"`` -> the function."""
    module_name, colon, name = spec.partition(":")
    if not colon or not module_name or not name:
        raise UsageError(f"{flag} {spec!r}: expected MODULE:FACTORY, e.g. mypackage.models:build_model")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise UsageError(
            f"{flag} {spec!r}: cannot import {module_name!r} ({error}); is its directory on PYTHONPATH?"
        ) from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UsageError(f"{flag} {spec!r}: {module_name} has no function {name!r}")
    return factory


def load_inputs(path: Path) -> tuple[np.ndarray, ...]:
    """A ``.npz`` (its arrays in the order they were saved) or a ``.npy``; never unpickles."""
    if path.suffix not in (".npz", ".npy"):
        raise UsageError(f"--inputs {path}: expected a .npz (the forward's positional arguments) or a .npy file")
    try:
        if path.suffix == ".npy":
            return (np.load(path, allow_pickle=False),)
        with np.load(path, allow_pickle=False) as archive:
            return tuple(archive[name] for name in archive.files)
    except ValueError as error:  # object arrays (they would need unpickling), or not a numpy file
        raise UsageError(f"--inputs {path}: cannot read it as numpy arrays without unpickling ({error})") from None


def _build(spec: str, flag: str, kind: type, description: str):
    model = load_factory(spec, flag)()
    if not isinstance(model, kind):
        raise UsageError(f"{flag} {spec!r} returned a {type(model).__name__}, not {description}")
    return model
