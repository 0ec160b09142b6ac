"""Numpy inputs to each side, and each side's outputs back to numpy."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch


def to_torch(tree, float_dtype: torch.dtype = torch.float32):
    """Arrays (numpy or torch) in nested tuples/lists/dicts -> torch tensors; floats as ``float_dtype``."""
    if isinstance(tree, (tuple, list)):
        return type(tree)(to_torch(x, float_dtype) for x in tree)
    if isinstance(tree, dict):
        return {k: to_torch(v, float_dtype) for k, v in tree.items()}
    if isinstance(tree, (np.ndarray, np.generic, torch.Tensor)):
        tensor = tree if isinstance(tree, torch.Tensor) else torch.from_numpy(np.array(tree))  # np.array: a copy
        return tensor.to(float_dtype) if tensor.is_floating_point() else tensor
    return tree


def to_jax(tree):
    """Arrays in nested tuples/lists/dicts -> JAX arrays; floats as float32, integers as JAX makes them."""
    if isinstance(tree, (tuple, list)):
        return type(tree)(to_jax(x) for x in tree)
    if isinstance(tree, dict):
        return {k: to_jax(v) for k, v in tree.items()}
    if isinstance(tree, torch.Tensor):
        tree = tree.detach().cpu().numpy()
    if isinstance(tree, (np.ndarray, np.generic)):
        array = np.asarray(tree)
        if array.dtype.kind == "f":
            return jnp.asarray(array, jnp.float32)
        return jnp.asarray(array, jnp.int32) if array.dtype.kind in "iu" else jnp.asarray(array)
    return tree


def arrays(value) -> list[np.ndarray]:
    """Every array in a layer's output (tuples, lists, dicts; Nones dropped), as numpy copies."""
    if value is None:
        return []
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in arrays(v)]
    if isinstance(value, dict):
        return [a for v in value.values() for a in arrays(v)]
    if isinstance(value, torch.Tensor):
        return [value.detach().cpu().numpy().copy()]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return [np.array(value)]
    return []


def first_array(args, kwargs) -> np.ndarray | None:
    """The first array among a call's arguments: what a layer's "input" means here."""
    found = arrays(list(args) + list(kwargs.values()))
    return found[0] if found else None
