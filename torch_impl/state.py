"""Weight transfer, torch side: the model's weights as canonical numpy arrays, and back; weight files.

The canonical naming and layout *is* torch's ``state_dict`` (``ml_patterns.checkpoint``), so this
side only converts: tensors to numpy copies, numpy to tensors. ``jax_impl.state`` does the renaming.
Files written by ``torch.save(state_dict)`` (the seed's format) are read here alone, through
``torch.load(..., weights_only=True)``, and ``convert_torch_file`` turns one into a portable checkpoint.
These three functions have no JAX twin: reading a torch file needs torch (the JAX side reads the
converted checkpoint).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ml_patterns import checkpoint
from ml_patterns.checkpoint import CheckpointError, canonical_array, check_arrays


def to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """``{state_dict name: numpy array}``, copies (the model may train on); bfloat16 widens to float32."""
    return {name: canonical_array(tensor_to_numpy(tensor)) for name, tensor in model.state_dict().items()}


def from_numpy(model: nn.Module, arrays: Mapping[str, np.ndarray], *, source: str = "arrays") -> None:
    """Copies canonical ``arrays`` into ``model`` in place (parameters and buffers), cast to each
    one's dtype; a ``checkpoint.ONE_SIDED`` key the arrays lack (BatchNorm's
    ``num_batches_tracked``, in a JAX-written file) keeps the model's value.

    Raises:
        ml_patterns.checkpoint.WeightMismatchError: listing every missing, unexpected, wrongly
            shaped key, or one of another dtype kind (floats for an integer buffer, or the reverse);
            nothing is copied then.
    """
    current = model.state_dict()
    check_arrays({name: (tuple(t.shape), dtype_kind(t.dtype)) for name, t in current.items()}, arrays, source=source)
    # canonical_array copies (the arrays may be read-only views of a file's bytes) and turns an
    # ml_dtypes bfloat16 array, which torch cannot read, into float32.
    model.load_state_dict(
        {
            name: torch.from_numpy(canonical_array(arrays[name])).to(t.device, t.dtype) if name in arrays else t
            for name, t in current.items()
        },
        strict=True,
    )


def dtype_kind(dtype: torch.dtype) -> str:
    """``checkpoint.dtype_kind``'s letter for a torch dtype."""
    if dtype.is_floating_point:
        return checkpoint.FLOAT
    if dtype == torch.bool:
        return checkpoint.BOOL
    return "c" if dtype.is_complex else checkpoint.INT


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A detached CPU numpy view of ``tensor``; bfloat16 (which numpy lacks) becomes float32, exactly."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()


def tree_to_numpy(tree: Mapping) -> dict:
    """A nested dict of tensors (outputs, gradients) as numpy arrays, e.g. for ``ml_patterns.parity``."""
    return {k: tree_to_numpy(v) if isinstance(v, Mapping) else tensor_to_numpy(v) for k, v in tree.items()}


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Canonical arrays from a portable checkpoint (verified: ``checkpoint.load_checkpoint``) or from
    a ``torch.save(state_dict)`` file (``read_torch_file``), told apart by their first bytes."""
    if checkpoint.sniff(path) in checkpoint.TORCH_KINDS:
        return read_torch_file(path)
    return checkpoint.load_checkpoint(path)[0]


def read_torch_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{name: array}`` of a file written by ``torch.save(state_dict)``, read with
    ``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary objects.

    Raises:
        CheckpointError: a file ``weights_only`` refuses, a corrupt file, or content that is not a
            flat mapping of names to tensors (naming what it holds instead).
    """
    path = Path(path)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 (UnpicklingError, RuntimeError for a bad zip, EOFError, ...)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path}: a PyTorch file that torch.load(weights_only=True) cannot read ({first_line}); "
            "only state_dicts of tensors are accepted, arbitrary pickled objects never"
        ) from None
    if not isinstance(content, Mapping):
        raise CheckpointError(
            f"{path}: holds a {type(content).__name__}, not a state_dict (a mapping of names to tensors)"
        )
    others = {str(name): type(value).__name__ for name, value in content.items() if not isinstance(value, torch.Tensor)}
    if others:
        listed = ", ".join(f"{name!r} ({kind})" for name, kind in list(others.items())[:5])
        raise CheckpointError(
            f"{path}: not a state_dict of tensors: {len(others)} entr{'y is' if len(others) == 1 else 'ies are'} "
            f"not tensors: {listed}; save model.state_dict() alone"
        )
    return {str(name): canonical_array(tensor_to_numpy(tensor)) for name, tensor in content.items()}


def convert_torch_file(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Converts a ``torch.save(state_dict)`` file into a portable checkpoint that both backends read
    (``ml-patterns convert IN.pt OUT.safetensors``); returns the destination. The checkpoint stores no
    model config (a state_dict has none): load it with ``model.load(path)`` into a model you build."""
    arrays = read_torch_file(source)
    return checkpoint.save_checkpoint(
        destination, arrays, backend="torch", model_class=None, config=None, versions={"torch": torch.__version__}
    )


def float64_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its floating-point parameters and buffers in float64: the same
    computation as the float32 model with its rounding errors a billion times smaller, the anchor a
    float32 run of either backend is measured against (``ml_patterns.verdict``). Train it with an
    optimizer built over the copy's parameters (its state is then float64 too) on ``float64_batch``es."""
    return copy.deepcopy(model).double()


def one_ulp_off(module: nn.Module, generator: torch.Generator) -> None:
    """Moves every floating-point parameter entry of ``module`` by one ulp, up or down at random
    (signs drawn from ``generator``, a CPU generator), in place: a difference of nothing but
    rounding. Applied after every optimizer step, it makes a run of the verdict's ensemble
    (``ml_patterns.verdict``): another backend rounds differently at every step, not only once."""
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.is_floating_point():
                up = torch.rand(parameter.shape, generator=generator) < 0.5
                toward = torch.where(up, torch.inf, -torch.inf).to(parameter.device, parameter.dtype)
                parameter.copy_(torch.nextafter(parameter, toward))


def float64_batch(batch):
    """``batch`` (numpy arrays or tensors in dicts, lists or tuples) with float32 leaves in float64,
    for ``float64_twin``; other dtypes (token ids, masks) as they are."""
    if isinstance(batch, Mapping):
        return {key: float64_batch(value) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(float64_batch(value) for value in batch)
    if isinstance(batch, (np.ndarray, torch.Tensor)) and batch.dtype in (np.float32, torch.float32):
        return batch.astype(np.float64) if isinstance(batch, np.ndarray) else batch.double()
    return batch


def check_optimizer_parameters(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Refuses (``ValueError``) an optimizer holding parameters that are not ``model``'s: built over
    another model instance it would step weights the trainer never uses, and the loss would not move.
    Leaving some of the model's parameters out (freezing them) is allowed."""
    own = {id(parameter) for parameter in model.parameters()}
    held = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    foreign = sum(id(parameter) not in own for parameter in held)
    if foreign:
        raise ValueError(
            f"the {type(optimizer).__name__} optimizer holds {foreign} of its {len(held)} parameters that are not "
            "this model's (built over another model instance?); build it over this model: "
            f"{type(optimizer).__name__}(model.parameters(), ...)"
        )
