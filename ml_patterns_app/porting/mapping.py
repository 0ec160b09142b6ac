"""Which torch tensor goes to which NNX variable: pair both modules' layers, check every shape.

The trees (``trees``) are paired container by container (``pairing``): layers of the same rule by
name, then in order; ``pairs={torch_path: nnx_path}`` overrides. Each pair's ``Rule`` lists its
``TensorMap``s, whose conversions are checked on the shapes. Every tensor left without a
counterpart, and every shape that does not convert, is collected, so one error lists them all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from flax import nnx

from ml_patterns.parity import text_table
from ml_patterns_app.porting.pairing import UnitPair, pair_trees
from ml_patterns_app.porting.rules import Rule, TensorMap, active_rules
from ml_patterns_app.porting.trees import (
    LOOSE,
    PortingError,
    Tree,
    Unit,
    join,
    require_nnx,
    require_torch,
    walk_nnx,
    walk_torch,
)

__all__ = ["LOOSE", "PortingError", "Row", "WeightMap", "map_weights", "read"]


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
class WeightMap:
    """The mapping between a torch module and an NNX module (``str()`` is the dry-run table)."""

    pairs: list[UnitPair]
    rows: list[Row]
    problems: list[str]
    torch_tree: Tree
    nnx_tree: Tree
    containers: list[tuple] = dataclasses.field(default_factory=list)  # (torch Node, NNX Node), paired
    ignored: tuple[str, ...] = ()

    @property
    def scope(self) -> str:
        """How much was paired: layers, loose parameters and tensors."""
        layers = sum(p.kind != LOOSE for p in self.pairs)
        tensors = sum(len(row.nnx_names) for row in self.rows if row.ok)
        return (
            f"{layers} layer(s) and {len(self.pairs) - layers} loose parameter(s) paired, "
            f"{tensors} NNX tensor(s) mapped" + (f", ignored: {', '.join(self.ignored)}" if self.ignored else "")
        )

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
        text = [text_table(lines), self.scope]
        notes = [
            f"  {p.kind} torch {p.torch.path or '<root>'} / nnx {p.nnx.path or '<root>'}: {note}"
            for p in self.pairs
            for note in p.notes
        ]
        if notes:
            text += [
                "layer notes: conventions and hyperparameters that differ (transfer does not change them):",
                *notes,
            ]
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
    require_torch(torch_module)
    require_nnx(nnx_module)
    ruleset = active_rules(rules)
    ignore = set(ignore)
    left, right = walk_torch(torch_module, ruleset), walk_nnx(nnx_module, ruleset)
    problems: list[str] = []
    skip = {id(u) for u in left.units + right.units if _ignored(u.path, ignore)}
    pairing = pair_trees(left, right, dict(pairs or {}), _fits, problems, skip)
    unit_pairs = pairing.units
    rows: list[Row] = []
    used = {"torch": set(), "nnx": set()}
    for pair in unit_pairs:
        rows += _pair_rows(pair, direction, used, ignore, problems)
    every = set()
    for side, tree in (("torch", left), ("nnx", right)):
        names = {join(u.path, n): t for u in tree.units for n, t in u.tensors.items()} | tree.extra
        every |= set(names)
        for name, tensor in names.items():
            if name not in used[side] and not _ignored(name, ignore):
                problems.append(f"{side} {name} {_shapes((_shape(tensor),))}: no counterpart on the other side")
    for entry in sorted(ignore):
        if not any(_ignored(name, {entry}) for name in every):
            problems.append(f"ignore entry {entry!r} names no tensor of either module")
    return WeightMap(unit_pairs, rows, problems, left, right, pairing.nodes, tuple(sorted(ignore)))


def _fits(t: Unit, n: Unit) -> bool:
    """Whether every tensor of ``t`` converts to ``n``'s shapes: pairing in order skips what does not."""
    maps = t.rule.tensors(t.module, n.module) if t.rule is not None else [TensorMap(("",), ("",))]
    for tensor_map in maps:
        sources = [t.tensors.get(name) for name in tensor_map.torch]
        targets = [n.tensors.get(name) for name in tensor_map.nnx]
        status = _status(tensor_map, tensor_map.torch, tensor_map.nnx, sources, targets, "to_nnx")
        if status != "ok" and not status.startswith("skipped"):
            return False
    return True


def _pair_rows(pair: UnitPair, direction: str, used: dict, ignore: set[str], problems: list[str]) -> list[Row]:
    t, n = pair.torch, pair.nnx
    maps = t.rule.tensors(t.module, n.module) if t.rule is not None else [TensorMap(("",), ("",))]
    rows = []
    for tensor_map in maps:
        torch_names = tuple(join(t.path, name) for name in tensor_map.torch)
        nnx_names = tuple(join(n.path, name) for name in tensor_map.nnx)
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
