"""Weight transfer, JAX side: an NNX model's state in the canonical (torch ``state_dict``) naming
and layout, and back. The format: ``ml_patterns.checkpoint``.

What is transferred (``STATE``) is what torch's ``state_dict`` holds: the parameters (``nnx.Param``)
and the running statistics (``nnx.BatchStat``, torch's persistent buffers); not the dropout streams'
RNG state, which torch keeps outside the model too.

The mapping is a rule on the layer type, not a table per model, because ``jax_impl.models`` uses
torch's attribute names (``layers.0.attention.q_proj``): a variable at path ``(*p, leaf)`` owned by

    nnx.Linear     kernel [in, out] -> "p.weight" [out, in] (transposed)    bias -> "p.bias"
    nnx.Embed      embedding        -> "p.weight"
    nnx.LayerNorm  scale            -> "p.weight"                           bias -> "p.bias"
    nnx.BatchNorm  scale            -> "p.weight"                           bias -> "p.bias"
                   mean             -> "p.running_mean"                     var  -> "p.running_var"

and any other variable keeps its path. Integer path parts (``nnx.List`` indices) print as torch's
``ModuleList`` indices do. Transposes are exact, so torch -> JAX -> torch is bit-exact.

torch's BatchNorm also has ``p.num_batches_tracked`` (an int64 count that only ``momentum=None``
reads), which nnx.BatchNorm lacks: loading ignores it and saving does not write it
(``checkpoint.ONE_SIDED``), so a torch model loading a JAX file keeps its own count. The layers'
updates differ (flax's ``momentum`` m is torch's 1 - m: flax's default 0.99 is torch's 0.01, where
torch's default is 0.1; torch's running variance is unbiased, flax's biased): the statistics
transfer as they are, and each side then updates them by its own rule.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ml_patterns.checkpoint import canonical_array, check_arrays, dtype_kind

# The variables of the canonical state: torch's parameters and persistent buffers. A tuple of types
# is also an NNX filter (``nnx.state(model, STATE)``).
STATE = (nnx.Param, nnx.BatchStat)

# (layer type, attribute) -> (canonical leaf name, transposed)
_RULES = (
    (nnx.Linear, "kernel", "weight", True),
    (nnx.Linear, "bias", "bias", False),
    (nnx.Embed, "embedding", "weight", False),
    (nnx.LayerNorm, "scale", "weight", False),
    (nnx.LayerNorm, "bias", "bias", False),
    (nnx.BatchNorm, "scale", "weight", False),
    (nnx.BatchNorm, "bias", "bias", False),
    (nnx.BatchNorm, "mean", "running_mean", False),
    (nnx.BatchNorm, "var", "running_var", False),
)


def canonical_layout(
    model: nnx.Module, variables: tuple[type[nnx.Variable], ...] = STATE
) -> dict[tuple, tuple[str, bool]]:
    """``{nnx path of each variable of the ``variables`` types: (canonical name, transposed)}``."""
    nodes = dict(nnx.iter_graph(model))
    layout = {}
    for path, node in nodes.items():
        if not isinstance(node, variables):
            continue
        owner, leaf = nodes.get(path[:-1]), path[-1]
        name, transposed = str(leaf), False
        for layer_type, attribute, canonical, transpose in _RULES:
            if isinstance(owner, layer_type) and leaf == attribute:
                name, transposed = canonical, transpose
                break
        layout[path] = (".".join([*map(str, path[:-1]), name]), transposed)
    return layout


def to_numpy(model: nnx.Module, values: nnx.State | None = None) -> dict[str, np.ndarray]:
    """The canonical ``{name: numpy array}`` of the model's ``STATE`` (parameters and running
    statistics), copies; bfloat16 widens to float32.

    ``values``: an ``nnx.State`` shaped like part of ``nnx.state(model, STATE)`` to convert instead,
    e.g. the gradients of ``jax.grad`` over ``models.functional``'s params (then only the parameters'
    names come out).
    """
    layout = canonical_layout(model)
    values = nnx.state(model, STATE) if values is None else values
    out = {}
    for path, leaf in nnx.to_flat_state(values):
        if path not in layout:
            raise KeyError(f"{'.'.join(map(str, path))} is not a parameter of {type(model).__name__}")
        name, transposed = layout[path]
        array = np.asarray(jax.device_get(_raw(leaf)))
        out[name] = canonical_array(array.T if transposed else array)
    return out


def from_numpy(
    model: nnx.Module,
    arrays: Mapping[str, np.ndarray],
    *,
    source: str = "arrays",
    variables: tuple[type[nnx.Variable], ...] = STATE,
) -> None:
    """Copies canonical ``arrays`` into ``model``'s variables of the ``variables`` types (``STATE``:
    parameters and running statistics; ``(nnx.Param,)``: the parameters alone, e.g. an optimizer's
    slots) in place, cast to each one's dtype. ``checkpoint.ONE_SIDED`` keys (torch BatchNorm's
    ``num_batches_tracked``) are ignored.

    Raises:
        ml_patterns.checkpoint.WeightMismatchError: listing every missing, unexpected, wrongly
            shaped key, or one of another dtype kind (nothing is copied then).
    """
    nodes = dict(nnx.iter_graph(model))
    layout = canonical_layout(model, variables)
    expected = {}
    for path, (name, transposed) in layout.items():
        # get_value(), not [...]: the model may be abstract (nnx.eval_shape), holding ShapeDtypeStructs.
        value = nodes[path].get_value()
        shape = tuple(value.shape)
        expected[name] = (shape[::-1] if transposed else shape, dtype_kind(value.dtype))
    check_arrays(expected, arrays, source=source)
    for path, (name, transposed) in layout.items():
        variable = nodes[path]
        array = canonical_array(arrays[name])
        variable.set_value(jnp.asarray(array.T if transposed else array, dtype=variable.get_value().dtype))


def tree_to_numpy(tree: Mapping) -> dict:
    """A nested dict of JAX arrays (outputs, losses) as numpy arrays, e.g. for ``ml_patterns.parity``."""
    return {k: tree_to_numpy(v) if isinstance(v, Mapping) else np.asarray(jax.device_get(v)) for k, v in tree.items()}


def _raw(leaf):
    return leaf[...] if isinstance(leaf, nnx.Variable) else leaf
