"""Which torch tensor goes to which NNX variable: walk both module trees, pair their layers, check shapes.

Both trees are walked in definition order (torch's ``named_modules``; for NNX, each module's
attributes in assignment order, since ``nnx.iter_graph`` sorts names). A module that a ``Rule``
matches is a *unit* (a layer: Linear, LayerNorm, MultiheadAttention...); parameters held directly
by other modules (``nn.Parameter`` / ``nnx.Param`` attributes) are *loose parameters*. Units pair
with units of the same rule and loose parameters with loose parameters, in order, whatever their
names; ``pairs={torch_path: nnx_path}`` overrides the order where the two ports define layers in
different orders. Every tensor left without a counterpart, and every shape that does not convert,
is collected, so one error lists them all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from flax import nnx

from ml_patterns.parity import text_table
from ml_patterns_app.porting.rules import Rule, TensorMap, active_rules

LOOSE = "parameter"  # the kind of a loose parameter pair
_GRAPH_NODES = (nnx.Module, getattr(nnx, "Pytree", nnx.Module))  # nnx.Pytree: flax >= 0.11


@dataclasses.dataclass
class Unit:
    """A layer (``rule`` set) or a loose parameter (``rule`` None) on one side, with its tensors
    by name relative to ``path`` (torch tensors, or NNX variables)."""

    kind: str
    path: str
    module: object
    rule: Rule | None
    tensors: dict[str, object]


@dataclasses.dataclass
class Tree:
    """One side, walked: units and loose parameters in definition order, the modules that are not
    units (containers, for per-layer comparisons), and tensors no rule can claim (``extra``)."""

    units: list[Unit]
    containers: list[tuple[str, object]]
    extra: dict[str, object]


@dataclasses.dataclass(frozen=True)
class Row:
    """One ``TensorMap`` of one pair, with full names, shapes and whether it converts."""

    pair: UnitPair
    tensor_map: TensorMap
    torch_names: tuple[str, ...]
    nnx_names: tuple[str, ...]
    torch_shapes: tuple[tuple[int, ...], ...]
    nnx_shapes: tuple[tuple[int, ...], ...]
    status: str  # "ok", "skipped: ...", or a problem

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclasses.dataclass
class UnitPair:
    kind: str
    torch: Unit
    nnx: Unit
    how: str  # "order" or "explicit"
    notes: list[str]


@dataclasses.dataclass
class WeightMap:
    """The mapping between a torch module and an NNX module (``str()`` is the dry-run table)."""

    pairs: list[UnitPair]
    rows: list[Row]
    problems: list[str]
    torch_tree: Tree
    nnx_tree: Tree

    def format_table(self) -> str:
        header = ("torch", "shape", "nnx", "shape", "layout", "status")
        lines = [header]
        for row in self.rows:
            lines.append(
                (
                    ", ".join(row.torch_names),
                    _shapes(row.torch_shapes),
                    ", ".join(row.nnx_names) or "-",
                    _shapes(row.nnx_shapes),
                    row.tensor_map.layout,
                    row.status,
                )
            )
        text = [text_table(lines)]
        notes = [
            f"  {p.kind} torch {p.torch.path or '<root>'} / nnx {p.nnx.path or '<root>'}: {note}"
            for p in self.pairs
            for note in p.notes
        ]
        if notes:
            text += ["hyperparameters that differ (transfer does not change them):", *notes]
        if self.problems:
            text += [f"{len(self.problems)} problem(s):", *(f"  - {p}" for p in self.problems)]
        return "\n".join(text)

    __str__ = format_table

    def raise_if_problems(self) -> None:
        if self.problems:
            raise PortingError(
                f"{len(self.problems)} tensor(s) unmatched or mismatched between the torch and the NNX module:\n"
                + "\n".join(f"  - {p}" for p in self.problems)
                + "\nWhat to do: give custom layers a Rule (rules=[...] or register_rule), pair layers defined "
                "in another order with pairs={torch_path: nnx_path}, or leave tensors out with ignore=[...]. "
                "transfer_weights(..., dry_run=True) shows the whole mapping."
            )


class PortingError(ValueError):
    """The two modules do not correspond: the message lists every tensor concerned."""


def map_weights(
    torch_module: torch.nn.Module,
    nnx_module: nnx.Module,
    *,
    rules: Sequence[Rule] = (),
    pairs: Mapping[str, str] | None = None,
    ignore: Iterable[str] = (),
    direction: str = "to_nnx",
) -> WeightMap:
    """Pairs the two modules' tensors and checks that each converts in ``direction`` ("to_nnx" or
    "to_torch"). Names are dotted paths (``blocks.0.attn.in_proj_weight``, ``blocks.0.attn.query.kernel``)."""
    if direction not in ("to_nnx", "to_torch"):
        raise ValueError(f"direction must be 'to_nnx' or 'to_torch', got {direction!r}")
    ruleset = active_rules(rules)
    ignore = set(ignore)
    left, right = walk_torch(torch_module, ruleset), walk_nnx(nnx_module, ruleset)
    problems: list[str] = []
    unit_pairs = _pair_units(left.units, right.units, dict(pairs or {}), problems)
    rows: list[Row] = []
    used = {"torch": set(), "nnx": set()}
    for pair in unit_pairs:
        rows += _pair_rows(pair, direction, used, ignore, problems)
    every = set()
    for side, tree in (("torch", left), ("nnx", right)):
        names = {_join(u.path, n): t for u in tree.units for n, t in u.tensors.items()} | tree.extra
        every |= set(names)
        for name, tensor in names.items():
            if name not in used[side] and not _ignored(name, ignore):
                problems.append(f"{side} {name} {_shapes((_shape(tensor),))}: no counterpart on the other side")
    for entry in sorted(ignore):
        if not any(_ignored(name, {entry}) for name in every):
            problems.append(f"ignore entry {entry!r} names no tensor of either module")
    return WeightMap(unit_pairs, rows, problems, left, right)


def walk_torch(module: torch.nn.Module, rules: Sequence[Rule]) -> Tree:
    units, containers, extra, inside = [], [], {}, []
    for path, sub in module.named_modules():  # pre-order, in registration order
        if any(prefix == "" or path.startswith(prefix + ".") for prefix in inside):
            continue
        rule = next((r for r in rules if isinstance(sub, r.torch_types)), None)
        if rule is not None:
            inside.append(path)
            units.append(Unit(rule.name, path, sub, rule, dict(sub.state_dict(keep_vars=True))))
            continue
        containers.append((path, sub))
        for name, param in sub._parameters.items():
            if param is not None:
                units.append(Unit(LOOSE, _join(path, name), sub, None, {"": param}))
        for name, buffer in sub._buffers.items():
            if buffer is not None and name not in sub._non_persistent_buffers_set:
                extra[_join(path, name)] = buffer
    return Tree(units, containers, extra)


def walk_nnx(module: nnx.Module, rules: Sequence[Rule]) -> Tree:
    tree, seen = Tree([], [], {}), set()

    def visit(path: str, node, parent) -> None:
        if isinstance(node, nnx.Variable):
            if isinstance(node, nnx.Param):
                tree.units.append(Unit(LOOSE, path, parent, None, {"": node}))
            elif not isinstance(node, nnx.RngState):
                tree.extra[path] = node
            return
        if isinstance(node, nnx.Module):
            if id(node) in seen:
                return
            seen.add(id(node))
            rule = next((r for r in rules if isinstance(node, r.nnx_types)), None)
            if rule is not None:
                tree.units.append(Unit(rule.name, path, node, rule, dict(nnx_variables(node))))
                return
            tree.containers.append((path, node))
            parent = node
        for name, value in _attributes(node):
            visit(_join(path, name), value, parent)

    visit("", module, module)
    return tree


def nnx_variables(node, prefix: str = "") -> Iterator[tuple[str, nnx.Variable]]:
    """Every variable under ``node`` except RNG state, by dotted path, in definition order."""
    for name, value in _attributes(node):
        path = _join(prefix, name)
        if isinstance(value, nnx.Variable):
            if not isinstance(value, nnx.RngState):
                yield path, value
        else:
            yield from nnx_variables(value, path)


def _attributes(node) -> list[tuple[str, object]]:
    if isinstance(node, dict):
        return [(str(k), v) for k, v in node.items()]
    if isinstance(node, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(node)]
    if isinstance(node, _GRAPH_NODES):
        return [(k, v) for k, v in vars(node).items() if not k.startswith("_pytree__") and k != "_length"]
    return []


def _pair_units(left: list[Unit], right: list[Unit], explicit: dict[str, str], problems: list[str]) -> list[UnitPair]:
    pairs = []
    by_path = {("torch", u.path): u for u in left} | {("nnx", u.path): u for u in right}
    taken: set[int] = set()
    for torch_path, nnx_path in explicit.items():
        t, n = by_path.get(("torch", torch_path)), by_path.get(("nnx", nnx_path))
        if t is None or n is None:
            missing = f"torch {torch_path!r}" if t is None else f"nnx {nnx_path!r}"
            problems.append(f"pairs: {missing} is not a layer or loose parameter of its module")
            continue
        if t.kind != n.kind:
            problems.append(f"pairs: torch {torch_path} is a {t.kind}, nnx {nnx_path} a {n.kind}")
        taken |= {id(t), id(n)}
        pairs.append(UnitPair(t.kind, t, n, "explicit", _notes(t, n)))
    kinds = dict.fromkeys(u.kind for u in left + right)
    for kind in kinds:
        ts = [u for u in left if u.kind == kind and id(u) not in taken]
        ns = [u for u in right if u.kind == kind and id(u) not in taken]
        pairs += [UnitPair(kind, t, n, "order", _notes(t, n)) for t, n in zip(ts, ns)]
        if len(ts) != len(ns):
            side, rest = ("torch", ts[len(ns) :]) if len(ts) > len(ns) else ("nnx", ns[len(ts) :])
            problems.append(
                f"{len(ts)} {kind} in torch, {len(ns)} in nnx; {side} {kind} without a counterpart: "
                + ", ".join(u.path or "<root>" for u in rest)
            )
    order = {id(u): i for i, u in enumerate(left)}
    return sorted(pairs, key=lambda p: order[id(p.torch)])


def _notes(t: Unit, n: Unit) -> list[str]:
    return t.rule.notes(t.module, n.module) if t.rule is not None and t.rule is n.rule else []


def _pair_rows(pair: UnitPair, direction: str, used: dict, ignore: set[str], problems: list[str]) -> list[Row]:
    t, n = pair.torch, pair.nnx
    maps = t.rule.tensors(t.module, n.module) if t.rule is not None else [TensorMap(("",), ("",))]
    rows = []
    for tensor_map in maps:
        torch_names = tuple(_join(t.path, name) for name in tensor_map.torch)
        nnx_names = tuple(_join(n.path, name) for name in tensor_map.nnx)
        if any(_ignored(name, ignore) for name in torch_names + nnx_names):
            continue
        sources = [t.tensors.get(name) for name in tensor_map.torch]
        targets = [n.tensors.get(name) for name in tensor_map.nnx]
        used["torch"].update(nm for nm, s in zip(torch_names, sources) if s is not None)
        used["nnx"].update(nm for nm, s in zip(nnx_names, targets) if s is not None)
        status = _status(tensor_map, torch_names, nnx_names, sources, targets, direction)
        if status != "ok" and not status.startswith("skipped"):
            problems.append(f"{', '.join(torch_names)} -> {', '.join(nnx_names) or '-'}: {status}")
        rows.append(
            Row(
                pair,
                tensor_map,
                torch_names,
                nnx_names,
                tuple(_shape(s) for s in sources),
                tuple(_shape(s) for s in targets),
                status,
            )
        )
    return rows


def _status(tensor_map, torch_names, nnx_names, sources, targets, direction) -> str:
    missing = [nm for nm, s in zip(torch_names, sources) if s is None]
    missing += [nm for nm, s in zip(nnx_names, targets) if s is None]
    if missing:
        return "missing " + ", ".join(missing)
    if not tensor_map.nnx:
        return f"skipped: {tensor_map.note}"
    convert, inputs, outputs = (
        (tensor_map.to_nnx, sources, targets) if direction == "to_nnx" else (tensor_map.to_torch, targets, sources)
    )
    try:
        converted = convert(*(np.zeros(_shape(x), np.float32) for x in inputs))
    except ValueError as error:  # a reshape or split that the shapes do not allow
        return f"cannot convert ({error})"
    got, want = tuple(np.shape(c) for c in converted), tuple(_shape(x) for x in outputs)
    return "ok" if got == want else f"shape mismatch: converted {_shapes(got)}, target {_shapes(want)}"


def read(tensor) -> np.ndarray:
    """A torch tensor or NNX variable as a numpy array (a copy for torch, so later writes don't alias)."""
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().cpu().numpy().copy()
    return np.asarray(tensor.get_value())


def _ignored(name: str, ignore: set[str]) -> bool:
    return any(name == entry or name.startswith(entry + ".") for entry in ignore)


def _shape(tensor) -> tuple[int, ...]:
    return () if tensor is None else tuple(tensor.shape)


def _shapes(shapes: Sequence[tuple[int, ...]]) -> str:
    return ", ".join("[" + ", ".join(map(str, s)) + "]" for s in shapes) or "-"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name
