"""How the tensors of one torch layer correspond to the variables of its NNX twin.

A ``Rule`` pairs a torch module type with an NNX module type and, given one module of each, lists
``TensorMap``s: which torch tensors (names relative to the module, e.g. ``"weight"``) become which
NNX variables (paths relative to the module, e.g. ``"kernel"``), and the two layout conversions.
Conversions work on numpy arrays and must be exact (transposes, reshapes, slices), so a round trip
is bit-exact and gradients convert like the weights they belong to.

The built-in rules cover the standard layers; a custom layer gets its own rule, passed to
``transfer_weights(rules=...)`` or registered once with ``register_rule``::

    register_rule(Rule("Scale", MyTorchScale, MyNnxScale,
                       lambda t, n: [TensorMap(("gamma",), ("scale",), _same, _same, "identity")]))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
from flax import nnx

Arrays = tuple[np.ndarray, ...]


def _same(*arrays: np.ndarray) -> Arrays:
    return arrays


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """``torch`` names and ``nnx`` paths of tensors that convert into each other.

    ``to_nnx(*torch_arrays) -> nnx_arrays`` and ``to_torch(*nnx_arrays) -> torch_arrays`` (tuples, in
    the order of the names). ``nnx=()`` marks torch tensors deliberately left alone (``note`` says why).
    """

    torch: tuple[str, ...]
    nnx: tuple[str, ...]
    to_nnx: Callable[..., Arrays] = _same
    to_torch: Callable[..., Arrays] = _same
    layout: str = "identity"
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Rule:
    """A torch module type and an NNX module type that hold the same layer.

    ``tensors(torch_module, nnx_module)`` lists the ``TensorMap``s; ``notes`` (optional) returns
    differences in hyperparameters that transfer cannot fix (epsilon, momentum), shown in the table.
    A module matched by a rule is one unit: its submodules are not walked further.
    ``channels_first``: torch's activations of this layer are [N, C, ...] where NNX's are [N, ..., C].
    """

    name: str
    torch_types: type | tuple[type, ...]
    nnx_types: type | tuple[type, ...]
    tensors: Callable[[torch.nn.Module, nnx.Module], list[TensorMap]]
    notes: Callable[[torch.nn.Module, nnx.Module], list[str]] = lambda t, n: []
    channels_first: bool = False


_REGISTRY: list[Rule] = []


def register_rule(rule: Rule) -> None:
    """Adds ``rule`` for every later ``transfer_weights``/``compare_*`` call (before the built-in rules)."""
    _REGISTRY.append(rule)


def active_rules(extra: Sequence[Rule] = ()) -> list[Rule]:
    """Rules in the order they are tried: the call's own, the registered ones, the built-in ones."""
    return [*extra, *_REGISTRY, *BUILTIN_RULES]


def _transpose(array: np.ndarray) -> Arrays:
    return (array.T,)


def _has(module, name: str) -> bool:
    return getattr(module, name, None) is not None


def _bias(torch_module, nnx_module) -> list[TensorMap]:
    # Only when both sides have one: a bias on one side only stays unmatched and is reported.
    return [TensorMap(("bias",), ("bias",))] if _has(torch_module, "bias") and _has(nnx_module, "bias") else []


def _scale_bias(torch_module, nnx_module) -> list[TensorMap]:
    scale = [TensorMap(("weight",), ("scale",))] if _has(torch_module, "weight") and _has(nnx_module, "scale") else []
    return scale + _bias(torch_module, nnx_module)


def _differs(what: str, torch_value, nnx_value) -> list[str]:
    return [] if torch_value == nnx_value else [f"{what}: torch {torch_value} vs nnx {nnx_value}"]


def _linear(t, n) -> list[TensorMap]:
    return [TensorMap(("weight",), ("kernel",), _transpose, _transpose, "transpose [out,in]->[in,out]")] + _bias(t, n)


def _conv(t, n) -> list[TensorMap]:
    rank = t.weight.ndim

    def to_nnx(w):  # OI(H)W -> (H)WIO
        return (np.transpose(w, (*range(2, rank), 1, 0)),)

    def to_torch(k):  # (H)WIO -> OI(H)W
        return (np.transpose(k, (rank - 1, rank - 2, *range(rank - 2))),)

    spatial = "IHW" if rank == 4 else "IW"
    return [TensorMap(("weight",), ("kernel",), to_nnx, to_torch, f"O{spatial}->{spatial[1:]}IO")] + _bias(t, n)


def _conv_notes(t, n) -> list[str]:
    rank = len(t.stride)
    strides = tuple(int(s) for s in np.broadcast_to(n.strides or 1, rank))
    notes = _differs("stride", tuple(t.stride), strides) + _differs("groups", t.groups, n.feature_group_count)
    return notes + _differs("padding", _padding(t.padding, rank), _padding(n.padding, rank))


def _padding(padding, rank: int):
    """torch's and nnx's padding spellings as one: a lower-case string or (low, high) per spatial axis."""
    if isinstance(padding, str):
        return padding.lower()
    pairs = np.broadcast_to(np.asarray(padding), (rank,) if np.ndim(padding) <= 1 else (rank, 2))
    pairs = tuple((int(p), int(p)) if np.ndim(p) == 0 else (int(p[0]), int(p[1])) for p in pairs)
    return "valid" if not any(map(any, pairs)) else pairs


def _norm_notes(t, n) -> list[str]:
    """Epsilon, and flax's one-pass variance (torch computes two-pass), which rounds differently."""
    fast = ["nnx use_fast_variance=True: var = E[x^2] - E[x]^2 (torch: two-pass), which cancels when |mean| >> std"]
    return _differs("epsilon", t.eps, n.epsilon) + (fast if getattr(n, "use_fast_variance", False) else [])


def _rms_notes(t, n) -> list[str]:
    # torch's eps=None means finfo(dtype).eps at call time.
    eps = t.eps if t.eps is not None else float(torch.finfo(torch.get_default_dtype()).eps)
    return _differs("epsilon", eps, n.epsilon)


def _embedding_notes(t, n) -> list[str]:
    notes = []
    if t.padding_idx is not None:
        notes.append(
            f"padding_idx={t.padding_idx}: torch gives row {t.padding_idx} no gradient (it keeps its initial value), "
            f"nnx.Embed trains it: zero that row's gradient on the NNX side (or keep the pad token out of the loss)"
        )
    if t.max_norm is not None:
        notes.append(f"max_norm={t.max_norm}: torch renormalizes the rows it looks up, in place; nnx.Embed does not")
    if t.scale_grad_by_freq:
        notes.append("scale_grad_by_freq=True: torch scales each row's gradient by its frequency in the batch")
    return notes


def _batchnorm(t, n) -> list[TensorMap]:
    stats = [TensorMap(("running_mean",), ("mean",)), TensorMap(("running_var",), ("var",))]
    stats = stats if t.track_running_stats else []
    counter = [
        TensorMap(("num_batches_tracked",), (), layout="-", note="torch-only counter (used only when momentum=None)")
    ]
    return _scale_bias(t, n) + stats + (counter if t.track_running_stats else [])


def _batchnorm_notes(t, n) -> list[str]:
    notes = _norm_notes(t, n)
    if t.momentum is None or abs((1.0 - t.momentum) - n.momentum) > 1e-12:
        notes.append(
            f"momentum: torch {t.momentum} (weight of the new batch) vs nnx {n.momentum} (weight of the old "
            f"value); equivalent nnx momentum is {None if t.momentum is None else 1.0 - t.momentum}"
        )
    notes.append("running var: torch stores the unbiased batch variance, nnx the biased one")
    return notes


def _mha(t, n) -> list[TensorMap]:
    heads, dim = t.num_heads, t.embed_dim
    head_dim = dim // heads

    def split(rows_per_proj: Sequence[int]):
        def to_nnx(w):  # [3E, in] or [3E]: torch stacks q, k, v along the output axis
            parts = np.split(w, np.cumsum(rows_per_proj)[:-1], axis=0)
            return tuple(
                p.T.reshape(p.shape[1], heads, head_dim) if p.ndim == 2 else p.reshape(heads, head_dim) for p in parts
            )

        def to_torch(*kernels):
            return (np.concatenate([k.reshape(-1, dim).T if k.ndim == 3 else k.reshape(dim) for k in kernels]),)

        return to_nnx, to_torch

    qkv = ("query.kernel", "key.kernel", "value.kernel")
    layout = "split q/k/v, transpose, [in,E]->[in,H,hd]"
    maps = []
    if t.in_proj_weight is not None:
        maps.append(TensorMap(("in_proj_weight",), qkv, *split([dim] * 3), layout))
    else:
        for name, path in zip(("q_proj_weight", "k_proj_weight", "v_proj_weight"), qkv):
            maps.append(TensorMap((name,), (path,), *split([dim]), layout))
    if t.in_proj_bias is not None and _has(n.query, "bias"):
        maps.append(
            TensorMap(
                ("in_proj_bias",),
                ("query.bias", "key.bias", "value.bias"),
                *split([dim] * 3),
                "split q/k/v, [E]->[H,hd]",
            )
        )

    def out_to_nnx(w):
        return (w.T.reshape(heads, head_dim, w.shape[0]),)

    def out_to_torch(k):
        return (k.reshape(dim, -1).T,)

    maps.append(
        TensorMap(("out_proj.weight",), ("out.kernel",), out_to_nnx, out_to_torch, "transpose, [E,out]->[H,hd,out]")
    )
    if t.out_proj.bias is not None and _has(n.out, "bias"):
        maps.append(TensorMap(("out_proj.bias",), ("out.bias",)))
    return maps


def _mha_notes(t, n) -> list[str]:
    notes = _differs("heads", t.num_heads, n.num_heads)
    if not t.batch_first:
        notes.append("torch batch_first=False: torch takes [L, B, E], nnx [B, L, E]")
    return notes + _differs("dropout", t.dropout, n.dropout_rate)


BUILTIN_RULES: tuple[Rule, ...] = (
    Rule("Linear", torch.nn.Linear, nnx.Linear, _linear),
    Rule(
        "Embedding",
        torch.nn.Embedding,
        nnx.Embed,
        lambda t, n: [TensorMap(("weight",), ("embedding",))],
        _embedding_notes,
    ),
    Rule("LayerNorm", torch.nn.LayerNorm, nnx.LayerNorm, _scale_bias, _norm_notes),
    Rule("RMSNorm", torch.nn.RMSNorm, nnx.RMSNorm, _scale_bias, _rms_notes),
    Rule("GroupNorm", torch.nn.GroupNorm, nnx.GroupNorm, _scale_bias, _norm_notes, channels_first=True),
    Rule("Conv", (torch.nn.Conv1d, torch.nn.Conv2d), nnx.Conv, _conv, _conv_notes, channels_first=True),
    Rule(
        "BatchNorm",
        (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d),
        nnx.BatchNorm,
        _batchnorm,
        _batchnorm_notes,
        channels_first=True,
    ),
    Rule("MultiheadAttention", torch.nn.MultiheadAttention, nnx.MultiHeadAttention, _mha, _mha_notes),
)
