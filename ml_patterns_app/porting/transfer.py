"""Copy weights between a torch module and its NNX port, with no naming from the user."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from ml_patterns_app.porting.mapping import WeightMap, map_weights, read
from ml_patterns_app.porting.rules import Rule


def transfer_weights(
    torch_module: torch.nn.Module,
    nnx_module: nnx.Module,
    *,
    direction: str = "to_nnx",
    rules: Sequence[Rule] = (),
    pairs: Mapping[str, str] | None = None,
    ignore: Iterable[str] = (),
    dry_run: bool = False,
) -> WeightMap:
    """Fills ``nnx_module`` from ``torch_module`` (``direction="to_nnx"``) or the reverse ("to_torch").

    Layers pair container by container, by name, then by type and definition order (see ``pairing``;
    a linen model wrapped with ``nnx.bridge.ToNNX`` pairs the same way, see ``linen``); each tensor
    is converted to the other side's layout (Linear kernels transposed, conv kernels OIHW <-> HWIO, attention in_proj
    split into q/k/v ``[E, H, hd]`` kernels...) and cast to the target's dtype. Hyperparameters
    (epsilon, BatchNorm momentum) are not changed: the table lists those that differ.

    Args:
        rules: ``Rule``s for custom layers, tried before the registered and built-in ones.
        pairs: ``{torch_path: nnx_path}`` for layers or containers that the two ports define in
            different orders under different names.
        ignore: torch or NNX names (tensors, or module paths: everything below) to leave alone.
        dry_run: only build and return the mapping (``print(result)`` shows the table), even when
            it has problems; nothing is written.

    Returns the ``WeightMap``. Raises ``PortingError`` listing every unmatched or mismatched tensor
    (nothing is written then), or saying how to get an NNX module from what was passed.
    """
    weight_map = map_weights(torch_module, nnx_module, rules=rules, pairs=pairs, ignore=ignore, direction=direction)
    if dry_run:
        return weight_map
    weight_map.raise_if_problems()
    for row in weight_map.rows:
        if not row.ok:  # skipped on purpose (e.g. BatchNorm's num_batches_tracked)
            continue
        sources = [row.pair.torch.tensors[n] for n in row.tensor_map.torch]
        targets = [row.pair.nnx.tensors[n] for n in row.tensor_map.nnx]
        if direction == "to_nnx":
            for variable, array in zip(targets, row.tensor_map.to_nnx(*map(read, sources))):
                variable.set_value(jnp.asarray(array, dtype=variable.get_value().dtype))
        else:
            with torch.no_grad():
                for tensor, array in zip(sources, row.tensor_map.to_torch(*map(read, targets))):
                    tensor.copy_(torch.from_numpy(np.array(array)).to(tensor.dtype))  # a writable copy
    return weight_map
