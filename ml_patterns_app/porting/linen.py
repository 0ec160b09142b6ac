"""Flax linen modules wrapped with ``nnx.bridge.ToNNX``: their layers found by variable names.

A ``ToNNX`` wrapper holds the linen variables as nested dicts by module path (all collections of a
module merged, names sorted), not as NNX layers. A dict whose entries are all variables is one linen
layer, recognized by its variable names, which linen's standard layers fix: ``kernel`` [+ ``bias``]
(``Dense`` with a 2-d kernel, ``Conv`` with more), ``embedding`` (``Embed``), ``scale`` [+ ``bias``]
(``LayerNorm``, ``RMSNorm``, ``GroupNorm``), those plus the ``mean``/``var`` statistics
(``BatchNorm``), and ``query``/``key``/``value``/``out`` kernels (``MultiHeadDotProductAttention``).
Such a layer pairs with a torch layer of a kind it can hold, and the torch layer's rule converts the
tensors (the same renames and layouts as for NNX: weight -> kernel/scale/embedding, transposes...).
"""

from __future__ import annotations

import re
import types

from flax import linen as nn
from flax import nnx

_NORMS = frozenset({"LayerNorm", "RMSNorm", "GroupNorm"})
_ATTENTION = ("query", "key", "value", "out")


def is_linen(obj) -> bool:
    return isinstance(obj, nn.Module)


def natural_key(name: str) -> tuple:
    """``Dense_10`` after ``Dense_2``: digit runs compare as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def layer(variables: dict) -> tuple[frozenset[str], object, dict[str, nnx.Variable]] | None:
    """``(torch kinds it can pair with, a namespace of its variables for the rules, tensors by name)``
    when ``variables`` (one module's dict inside a ``ToNNX``) is a standard linen layer, else None."""
    if set(variables) == set(_ATTENTION) and all(isinstance(v, dict) and _kernel_kind(v) for v in variables.values()):
        tensors = {f"{proj}.{name}": var for proj in _ATTENTION for name, var in variables[proj].items()}
        namespace = types.SimpleNamespace(**{proj: types.SimpleNamespace(**variables[proj]) for proj in _ATTENTION})
        return frozenset({"MultiheadAttention"}), namespace, tensors
    if not variables or not all(isinstance(v, nnx.Variable) for v in variables.values()):
        return None
    names = set(variables)
    kinds = (
        _kernel_kind(variables)
        or ({"Embedding"} if names == {"embedding"} else None)
        or (_NORMS if names in ({"scale"}, {"scale", "bias"}) else None)
        or ({"BatchNorm"} if {"mean", "var"} <= names <= {"mean", "var", "scale", "bias"} else None)
    )
    return (frozenset(kinds), types.SimpleNamespace(**variables), dict(variables)) if kinds else None


def _kernel_kind(variables: dict) -> set[str] | None:
    if "kernel" not in variables or not set(variables) <= {"kernel", "bias"}:
        return None
    kernel = variables["kernel"]
    return {"Linear"} if kernel.ndim == 2 else {"Conv"} if kernel.ndim in (3, 4) else None
