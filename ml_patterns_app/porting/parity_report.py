"""``ml-patterns parity``: the molecule models built on both backends from one set of weights, run
on a real batch, compared output by output, loss by loss and gradient by gradient.

    ml-patterns parity [--data DIR] [--config overrides.json] [--batch-size 16] [--seed 0]

For each architecture (``multitask``, ``autoencoder``): torch builds the model, its weights are
copied into the JAX model (``state.to_numpy`` / ``state.from_numpy``), both run the same batch in
eval mode (dropout off) and full float32, and ``ml_patterns.parity.compare`` prints one row per
output, loss part and parameter gradient, with torch in float64 as the reference that tells
float32 rounding from a real difference (see ``ml_patterns.parity``). Exit status 1 on any failure.

``measure`` is also what the parity tests run, so the report and the tests check the same thing.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jax_impl.models
import jax_impl.molecules.models
import jax_impl.runtime
import jax_impl.state
import jax_impl.training
import torch_impl.models
import torch_impl.molecules.models
import torch_impl.runtime
import torch_impl.state
import torch_impl.training
from jax_impl.collate import collate_molecules
from ml_patterns import parity
from ml_patterns.data import LazyDataset
from ml_patterns.errors import UsageError
from ml_patterns.molecules.batches import prepare_batch
from ml_patterns.molecules.config import ARCHITECTURES, ModelConfig
from ml_patterns.molecules.prepare import read_manifest

TOLERANCES = {"outputs": parity.FORWARD, "loss": parity.LOSS, "gradients": parity.GRADIENT}


@dataclasses.dataclass(frozen=True)
class Measured:
    """``{"outputs": {...}, "loss": {"total": ..., part: ...}, "gradients": {canonical name: ...}}``
    as numpy, per side; ``float64`` is torch in float64 from the same weights (None if not asked)."""

    torch: dict
    jax: dict
    float64: dict | None


def build_pair(config: ModelConfig) -> tuple[torch_impl.models.BaseModel, jax_impl.models.BaseModel]:
    """The model on both sides, JAX holding a copy of torch's weights; both in eval mode."""
    torch_model = torch_impl.molecules.models.build_model(config).eval()
    jax_model = jax_impl.molecules.models.build_model(config, weights=torch_impl.state.to_numpy(torch_model))
    jax_model.eval()
    return torch_model, jax_model


def measure(
    torch_model: torch_impl.models.BaseModel,
    jax_model: jax_impl.models.BaseModel,
    batch: dict,
    *,
    per_part: bool = False,
    dtype: str = "float32",
    reference: bool = True,
) -> Measured:
    """Forward outputs, loss parts and gradients of both models on the numpy ``batch``, in eval mode.

    Args:
        per_part: gradients of every loss part apart (each head alone) besides the total's:
            ``"gradients"`` is then ``{"total": {...}, part: {...}}``.
        dtype: ``"float32"`` or ``"bfloat16"`` (parameters and float inputs cast on both sides).
        reference: also run torch in float64.
    """
    torch_result = _measure_torch(torch_model, batch, per_part, _torch_dtype(dtype))
    fn, params, rest = jax_impl.models.functional(jax_model)
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    arrays = _cast_floats(jax_impl.training.to_device(batch), lambda a: a.astype(dtype))
    outputs, losses, grads = _jax_measure(fn, params, rest, arrays, per_part)
    to_numpy = functools.partial(jax_impl.state.to_numpy, jax_model)
    jax_result = {
        "outputs": jax_impl.state.tree_to_numpy(outputs),
        "loss": jax_impl.state.tree_to_numpy(losses),
        "gradients": {k: to_numpy(g) for k, g in grads.items()} if per_part else to_numpy(grads["total"]),
    }
    float64 = _measure_torch(torch_model, batch, per_part, torch.float64) if reference else None
    return Measured(torch_result, jax_result, float64)


def compare_models(torch_model, jax_model, batch: dict, **kwargs) -> parity.Report:
    measured = measure(torch_model, jax_model, batch, **kwargs)
    return parity.compare(measured.torch, measured.jax, TOLERANCES, reference=measured.float64, names=("torch", "jax"))


def real_batch(data_dir: Path, config: ModelConfig, batch_size: int, seed: int, split: str = "val") -> dict:
    """``batch_size`` molecules of ``split`` drawn with ``seed``, collated (padding to the longest)
    and prepared for ``config``'s model (masks drawn from ``seed`` too)."""
    dataset = LazyDataset(data_dir, split=split)
    rng = np.random.default_rng(seed)
    indices = rng.choice(len(dataset), size=min(batch_size, len(dataset)), replace=False)
    collated = collate_molecules([dataset[int(i)] for i in indices], max_length=config.max_len)
    dataset.close()
    return prepare_batch(collated, config, rng)


def _measure_torch(model, batch: dict, per_part: bool, dtype: torch.dtype) -> dict:
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)
    tensors = _cast_floats(torch_impl.training.to_device(batch), lambda t: t.to(dtype))
    with torch.no_grad():
        outputs = model(tensors)
    total, parts = model.loss_parts(tensors)
    losses = {"total": total, **parts}
    grads = {}
    for name in losses if per_part else ["total"]:
        model.zero_grad(set_to_none=True)
        losses[name].backward(retain_graph=True)
        # A parameter the part does not reach has no .grad; JAX reports zeros for it.
        grads[name] = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}
    return {
        "outputs": torch_impl.state.tree_to_numpy(outputs),
        "loss": torch_impl.state.tree_to_numpy(losses),
        "gradients": torch_impl.state.tree_to_numpy(grads if per_part else grads["total"]),
    }


@functools.partial(jax.jit, static_argnames=("fn", "per_part"))
def _jax_measure(fn: jax_impl.models.Functional, params, rest, batch: dict, per_part: bool):
    """Outputs, ``{"total", part...}`` losses and gradients in one compiled function (compiling is
    what costs on CPU; ``fn`` is hashable, so models of one structure share the compilation)."""

    def losses(params):
        total, parts = fn.loss(params, rest, batch)
        return {"total": total, **parts}

    values = losses(params)
    if per_part:
        grads = jax.jacrev(losses)(params)
    else:
        grads = {"total": jax.grad(lambda p: losses(p)["total"])(params)}
    return fn.apply(params, rest, batch), values, grads


def _cast_floats(tree: dict, cast) -> dict:
    """Casts every floating-point leaf (labels) so that no op mixes dtypes (strict promotion)."""
    return {
        k: _cast_floats(v, cast) if isinstance(v, dict) else (cast(v) if _is_float(v) else v) for k, v in tree.items()
    }


def _is_float(value) -> bool:
    return (
        value.dtype.is_floating_point if isinstance(value, torch.Tensor) else jnp.issubdtype(value.dtype, jnp.floating)
    )


def _torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def run(data: Path, config_file: Path | None = None, batch_size: int = 16, seed: int = 0) -> int:
    """The ``parity`` subcommand: one report per architecture; 0 if every row passed, 1 otherwise."""
    for runtime in (torch_impl.runtime, jax_impl.runtime):
        runtime.set_precision("float32")  # the parity policy: full float32 on both sides
    jax.config.update("jax_default_device", jax_impl.runtime.device("cpu"))  # where torch's models are built
    manifest = read_manifest(data)
    overrides = read_overrides(config_file) if config_file else {}
    architectures = [overrides.pop("architecture")] if "architecture" in overrides else list(ARCHITECTURES)
    failed = False
    for architecture in architectures:
        try:
            config = ModelConfig.from_manifest(manifest, **{**overrides, "architecture": architecture, "seed": seed})
        except (TypeError, ValueError) as error:  # the user's fields: name the file they came from
            raise UsageError(f"{config_file}: {error}") from error
        batch = real_batch(data, config, batch_size, seed)
        torch_model, jax_model = build_pair(config)
        report = compare_models(torch_model, jax_model, batch)
        shape = "x".join(map(str, batch["input_ids"].shape))
        print(f"\n== {architecture}: {type(torch_model).__name__}, batch {shape} from {data} (val split) ==")
        print(report.format_table())
        failed |= not report.passed
    print("\nparity: FAILED" if failed else "\nparity: all rows passed")
    return 1 if failed else 0


def read_overrides(path: Path) -> dict:
    """A JSON object of ``ModelConfig`` fields; anything else is a ``UsageError`` naming the file."""
    try:
        overrides = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(overrides, dict):
        raise UsageError(f"{path}: expected a JSON object of ModelConfig fields, got {type(overrides).__name__}")
    return overrides
