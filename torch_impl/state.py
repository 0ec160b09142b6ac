"""Weight transfer, torch side: the model's weights as canonical numpy arrays, and back.

The canonical naming and layout *is* torch's ``state_dict`` (``ml_patterns.checkpoint``), so this
side only converts: tensors to numpy copies, numpy to tensors. ``jax_impl.state`` does the renaming.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ml_patterns.checkpoint import canonical_array, check_arrays


def to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """``{state_dict name: numpy array}``, copies (the model may train on); bfloat16 widens to float32."""
    return {name: canonical_array(tensor_to_numpy(tensor)) for name, tensor in model.state_dict().items()}


def from_numpy(model: nn.Module, arrays: Mapping[str, np.ndarray], *, source: str = "arrays") -> None:
    """Copies canonical ``arrays`` into ``model`` in place, cast to each parameter's dtype.

    Raises:
        ml_patterns.checkpoint.WeightMismatchError: listing every missing, unexpected or wrongly
            shaped key (nothing is copied then).
    """
    current = model.state_dict()
    check_arrays({name: tuple(t.shape) for name, t in current.items()}, arrays, source=source)
    # canonical_array copies (the arrays may be read-only views of a file's bytes) and turns an
    # ml_dtypes bfloat16 array, which torch cannot read, into float32.
    model.load_state_dict(
        {name: torch.from_numpy(canonical_array(arrays[name])).to(t.device, t.dtype) for name, t in current.items()},
        strict=True,
    )


def tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A detached CPU numpy view of ``tensor``; bfloat16 (which numpy lacks) becomes float32, exactly."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()


def tree_to_numpy(tree: Mapping) -> dict:
    """A nested dict of tensors (outputs, gradients) as numpy arrays, e.g. for ``ml_patterns.parity``."""
    return {k: tree_to_numpy(v) if isinstance(v, Mapping) else tensor_to_numpy(v) for k, v in tree.items()}
