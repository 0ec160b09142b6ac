"""Weight transfer, JAX side: an NNX model's parameters in the canonical (torch ``state_dict``)
naming and layout, and back. The format: ``ml_patterns.checkpoint``.

The mapping is a rule on the layer type, not a table per model, because ``jax_impl.models`` uses
torch's attribute names (``layers.0.attention.q_proj``): a parameter at path ``(*p, leaf)`` owned by

    nnx.Linear     kernel [in, out] -> "p.weight" [out, in] (transposed)    bias -> "p.bias"
    nnx.Embed      embedding        -> "p.weight"
    nnx.LayerNorm  scale            -> "p.weight"                           bias -> "p.bias"

and any other parameter keeps its path. Integer path parts (``nnx.List`` indices) print as torch's
``ModuleList`` indices do. Transposes are exact, so torch -> JAX -> torch is bit-exact.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ml_patterns.checkpoint import canonical_array, check_arrays

# (layer type, attribute) -> (canonical leaf name, transposed)
_RULES = (
    (nnx.Linear, "kernel", "weight", True),
    (nnx.Linear, "bias", "bias", False),
    (nnx.Embed, "embedding", "weight", False),
    (nnx.LayerNorm, "scale", "weight", False),
    (nnx.LayerNorm, "bias", "bias", False),
)


def canonical_layout(model: nnx.Module) -> dict[tuple, tuple[str, bool]]:
    """``{nnx path of each Param: (canonical name, transposed)}``."""
    nodes = dict(nnx.iter_graph(model))
    layout = {}
    for path, node in nodes.items():
        if not isinstance(node, nnx.Param):
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
    """The canonical ``{name: numpy array}`` of the model's parameters, copies; bfloat16 widens to float32.

    ``values``: an ``nnx.State`` shaped like ``nnx.state(model, nnx.Param)`` to convert instead of
    the parameters, e.g. the gradients of ``jax.grad`` over ``models.functional``'s params.
    """
    layout = canonical_layout(model)
    values = nnx.state(model, nnx.Param) if values is None else values
    out = {}
    for path, leaf in nnx.to_flat_state(values):
        if path not in layout:
            raise KeyError(f"{'.'.join(map(str, path))} is not a parameter of {type(model).__name__}")
        name, transposed = layout[path]
        array = np.asarray(jax.device_get(_raw(leaf)))
        out[name] = canonical_array(array.T if transposed else array)
    return out


def from_numpy(model: nnx.Module, arrays: Mapping[str, np.ndarray], *, source: str = "arrays") -> None:
    """Copies canonical ``arrays`` into ``model`` in place, cast to each parameter's dtype.

    Raises:
        ml_patterns.checkpoint.WeightMismatchError: listing every missing, unexpected or wrongly
            shaped key (nothing is copied then).
    """
    nodes = dict(nnx.iter_graph(model))
    layout = canonical_layout(model)
    expected = {}
    for path, (name, transposed) in layout.items():
        # get_value(), not [...]: the model may be abstract (nnx.eval_shape), holding ShapeDtypeStructs.
        shape = tuple(nodes[path].get_value().shape)
        expected[name] = shape[::-1] if transposed else shape
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
