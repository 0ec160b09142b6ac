"""Which torch layer pairs with which NNX layer: container by container, along both module trees.

From the two roots down, the containers a pair of containers holds are paired first by name, then, in
order, those holding as many parameters, then the rest in order when both sides have as many left.
Where one side has fewer containers left, they are opened (their children take their place) until the
two sides match, so a torch ``blocks`` list pairs its items with linen's ``Block_0``, ``Block_1``.
Containers still left are opened entirely, into the layers of the enclosing pair.

Inside a pair of containers, layers of one kind (and loose parameters) pair by name, then in order.
When the two sides hold different numbers of them, only layers whose tensors convert pair (in order)
and the difference is reported there ("attention.self: 3 Linear in torch, 1 in nnx"): later
containers still pair. Explicit ``pairs={torch_path: nnx_path}`` are taken out first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from flax import nnx

from ml_patterns_app.porting.trees import Node, Tree, Unit

_MAX_OPENINGS = 8  # levels of containers opened on one side to match the other's, at one pair


@dataclasses.dataclass
class UnitPair:
    kind: str
    torch: Unit
    nnx: Unit
    how: str  # "name", "order" or "explicit"
    notes: list[str]


@dataclasses.dataclass
class Pairing:
    units: list[UnitPair]
    nodes: list[tuple[Node, Node]]  # containers paired, from the roots down


def pair_trees(
    left: Tree,
    right: Tree,
    explicit: dict[str, str],
    fits: Callable[[Unit, Unit], bool],
    problems: list[str],
    skip: set[int] = frozenset(),
) -> Pairing:
    """Pairs ``left``'s (torch) units with ``right``'s (NNX), leaving out the units in ``skip`` (ids);
    every other unpaired unit ends up in ``problems``. ``explicit`` may pair layers, loose parameters
    or containers (whose contents then pair with each other only)."""
    result, taken = Pairing([], []), set(skip)
    by_path = {("torch", u.path): u for u in left.units} | {("nnx", u.path): u for u in right.units}
    nodes = {("torch", x.path): x for x in _all_nodes(left.root)} | {("nnx", x.path): x for x in _all_nodes(right.root)}
    ctx = _Context(result, taken, fits, problems, set())
    containers = []
    for torch_path, nnx_path in explicit.items():
        t, n = by_path.get(("torch", torch_path)), by_path.get(("nnx", nnx_path))
        if t is None and n is None and ("torch", torch_path) in nodes and ("nnx", nnx_path) in nodes:
            containers.append((nodes["torch", torch_path], nodes["nnx", nnx_path]))
            ctx.claimed |= {id(containers[-1][0]), id(containers[-1][1])}
            continue
        if t is None or n is None:
            missing = f"torch {torch_path!r}" if t is None else f"nnx {nnx_path!r}"
            problems.append(
                f"pairs: {missing} is not a layer, loose parameter or container of its module (or the other is not)"
            )
            continue
        if t.kind not in n.kinds:
            problems.append(f"pairs: torch {torch_path} is a {t.kind}, nnx {nnx_path} a {n.kind}")
        taken |= {id(t), id(n)}
        result.units.append(UnitPair(t.kind, t, n, "explicit", _notes(t, n)))
    _pair_nodes(left.root, right.root, ctx)
    for t, n in containers:
        _pair_nodes(t, n, ctx)
    order = {id(u): i for i, u in enumerate(left.units)}
    result.units.sort(key=lambda p: order[id(p.torch)])
    return result


@dataclasses.dataclass
class _Context:
    result: Pairing
    taken: set[int]
    fits: Callable[[Unit, Unit], bool]
    problems: list[str]
    claimed: set[int]  # containers paired explicitly: left out of the walk, paired on their own


def _pair_nodes(t: Node, n: Node, ctx: _Context) -> None:
    ctx.result.nodes.append((t, n))
    left, right = _holding(t.children, ctx.claimed), _holding(n.children, ctx.claimed)
    for _ in range(_MAX_OPENINGS):
        pairs, rest_t, rest_n = _match_nodes(_nodes(left), _nodes(right))
        if not rest_t and not rest_n:
            break
        fewer, side = (rest_t, "t") if len(rest_t) < len(rest_n) else (rest_n, "n")
        if not any(_nodes(c.children) for c in fewer):
            break
        if side == "t":
            left = _open(left, fewer, ctx.claimed)
        else:
            right = _open(right, fewer, ctx.claimed)
    left, right = _open(left, rest_t, ctx.claimed, fully=True), _open(right, rest_n, ctx.claimed, fully=True)
    where = t.path or "<root>" if t.path == n.path else f"torch {t.path or '<root>'} / nnx {n.path or '<root>'}"
    _pair_units(where, _units(left, ctx.taken), _units(right, ctx.taken), ctx)
    for a, b in pairs:
        _pair_nodes(a, b, ctx)


def _pair_units(where: str, left: list[Unit], right: list[Unit], ctx: _Context) -> None:
    free = list(right)
    for kind in dict.fromkeys(u.kind for u in left):
        ts, ns = [u for u in left if u.kind == kind], [u for u in free if kind in u.kinds]
        pairs, rest_t, rest_n = _by_name(ts, ns)
        if len(rest_t) == len(rest_n):
            pairs += [(a, b, "order") for a, b in zip(rest_t, rest_n)]
            rest_t = rest_n = []
        else:
            greedy, rest_t, rest_n = _in_order(rest_t, rest_n, ctx.fits)
            pairs += greedy
        for a, b, how in pairs:
            ctx.taken |= {id(a), id(b)}
            free.remove(b)
            ctx.result.units.append(UnitPair(kind, a, b, how, _notes(a, b)))
        if rest_t or rest_n:
            ctx.problems.append(_count_problem(where, kind, len(ts), len(ns), rest_t, rest_n))
            reported = {id(u) for u in rest_n}
            free = [u for u in free if id(u) not in reported]
    for kind in dict.fromkeys(u.kind for u in free):
        rest = [u for u in free if u.kind == kind]
        ctx.problems.append(_count_problem(where, kind, 0, len(rest), [], rest))


def _count_problem(where, kind, in_torch, in_nnx, rest_t, rest_n) -> str:
    sides = [(side, rest) for side, rest in (("torch", rest_t), ("nnx", rest_n)) if rest]
    return f"{where}: {in_torch} {kind} in torch, {in_nnx} in nnx; " + "; ".join(
        f"{side} {kind} without a counterpart: " + ", ".join(u.path or "<root>" for u in rest) for side, rest in sides
    )


def _by_name(ts: list, ns: list) -> tuple[list, list, list]:
    names = {}
    for n in ns:
        names.setdefault(n.name, n)
    pairs = [(t, names.pop(t.name), "name") for t in ts if t.name in names]
    paired = {id(x) for pair in pairs for x in pair[:2]}
    return pairs, [t for t in ts if id(t) not in paired], [n for n in ns if id(n) not in paired]


def _in_order(ts: list[Unit], ns: list[Unit], fits) -> tuple[list, list[Unit], list[Unit]]:
    """Pairs in order, skipping what does not convert (a fused qkv kernel against q, k, v)."""
    pairs, start = [], 0
    for t in ts:
        match = next((j for j in range(start, len(ns)) if fits(t, ns[j])), None)
        if match is not None:
            pairs.append((t, ns[match], "order"))
            start = match + 1
    paired = {id(x) for pair in pairs for x in pair[:2]}
    return pairs, [t for t in ts if id(t) not in paired], [n for n in ns if id(n) not in paired]


def _match_nodes(ts: list[Node], ns: list[Node]) -> tuple[list, list[Node], list[Node]]:
    pairs, ts, ns = _by_name(ts, ns)
    pairs = [(a, b) for a, b, _ in pairs]
    same, start = [], 0
    for t in ts:  # in order, those holding as many parameters
        match = next((j for j in range(start, len(ns)) if _size(t) == _size(ns[j])), None)
        if match is not None:
            same.append((t, ns[match]))
            start = match + 1
    paired = {id(x) for pair in same for x in pair}
    pairs += same
    ts, ns = [t for t in ts if id(t) not in paired], [n for n in ns if id(n) not in paired]
    if len(ts) == len(ns):
        return pairs + list(zip(ts, ns)), [], []
    return pairs, ts, ns


def _open(children: list, nodes: list[Node], claimed: set[int], fully: bool = False) -> list:
    """``children`` with each of ``nodes`` replaced by its children (``fully``: by its units)."""
    opened = {id(node) for node in nodes}
    result = []
    for child in children:
        if id(child) not in opened:
            result.append(child)
        elif fully:
            for inner in _holding(child.children, claimed):
                result += [inner] if isinstance(inner, Unit) else _open([inner], [inner], claimed, fully=True)
        else:
            result += _holding(child.children, claimed)
    return result


def _holding(children: list, claimed: set[int]) -> list:
    """Units, and containers that hold any (a GELU or Dropout module holds none: nothing to pair),
    except containers paired explicitly."""
    return [c for c in children if isinstance(c, Unit) or (id(c) not in claimed and next(c.units(), None) is not None)]


def _all_nodes(node: Node):
    yield node
    for child in node.children:
        if isinstance(child, Node):
            yield from _all_nodes(child)


def _nodes(children: list) -> list[Node]:
    return [c for c in children if isinstance(c, Node)]


def _units(children: list, taken: set[int]) -> list[Unit]:
    return [c for c in children if isinstance(c, Unit) and id(c) not in taken]


def _size(node: Node) -> int:
    """Trainable entries under ``node`` (buffers and statistics left out: torch and NNX keep different ones)."""
    return sum(
        int(np.prod(tensor.shape))
        for unit in node.units()
        for tensor in unit.tensors.values()
        if isinstance(tensor, (torch.nn.Parameter, nnx.Param))
    )


def _notes(t: Unit, n: Unit) -> list[str]:
    if t.rule is None or (t.rule is not n.rule and n.linen is None):
        return []
    if n.linen is None:
        return t.rule.notes(t.module, n.module)
    try:  # a linen layer's variables hold no settings: only notes about the torch side can be made
        return t.rule.notes(t.module, n.module)
    except AttributeError:
        return []
