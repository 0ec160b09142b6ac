"""Both modules as trees: containers holding layers (units) and loose parameters, in definition order.

torch: ``named_children`` in registration order, a module's own parameters first. NNX: each module's
attributes in assignment order (``nnx.iter_graph`` would sort them); dicts and lists are containers
too. A module that a ``Rule`` matches is a *unit* and is not walked further. Parameters held directly
by other modules (``nn.Parameter`` / ``nnx.Param`` attributes) are *loose parameters*, units of kind
``LOOSE``. Inside an ``nnx.bridge.ToNNX`` wrapper the linen variables are nested dicts by module path;
``linen`` recognizes the standard layers there by their variable names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import torch
from flax import nnx

from ml_patterns_app.porting import linen
from ml_patterns_app.porting.rules import Rule

LOOSE = "parameter"  # the kind of a loose parameter
_GRAPH_NODES = (nnx.Module, getattr(nnx, "Pytree", nnx.Module))  # nnx.Pytree: flax >= 0.11


class PortingError(ValueError):
    """The two modules do not correspond, or one is not what the toolkit compares: the message lists
    every tensor concerned, or says what to pass instead."""


@dataclasses.dataclass(eq=False)
class Unit:
    """A layer (``rule`` set; for a linen layer, ``kinds`` lists the torch layers it can hold) or a
    loose parameter, with its tensors by name relative to ``path`` (torch tensors or NNX variables).
    ``linen``: ``(ToNNX wrapper, module path inside it)`` for a layer of a wrapped linen module."""

    kind: str
    path: str
    module: object
    rule: Rule | None
    tensors: dict[str, object]
    kinds: frozenset[str] = frozenset()
    linen: tuple[object, tuple[str, ...]] | None = None

    def __post_init__(self):
        self.kinds = self.kinds or frozenset({self.kind})

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]


@dataclasses.dataclass(eq=False)
class Node:
    """A container: a module that no rule matches, a dict or a list; its children in definition order."""

    path: str
    module: object
    children: list[Node | Unit] = dataclasses.field(default_factory=list)
    linen: tuple[object, tuple[str, ...]] | None = None

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]

    def units(self) -> Iterator[Unit]:
        for child in self.children:
            yield from child.units() if isinstance(child, Node) else (child,)


@dataclasses.dataclass
class Tree:
    """One side, walked: the container tree, its units in definition order, the NNX modules that are
    not units (their mode flags are set for ``compare_forward``) and tensors no rule claims (``extra``)."""

    root: Node
    units: list[Unit]
    containers: list[tuple[str, object]]
    extra: dict[str, object]


def require_torch(module) -> None:
    if isinstance(module, torch.nn.Module):
        return
    hint = " (the NNX model goes second)" if isinstance(module, nnx.Module) else ""
    raise PortingError(f"the first model is a {type(module).__name__}, not a torch.nn.Module{hint}")


def require_nnx(module) -> None:
    """Refuses what is not a Flax NNX module, saying how to get one."""
    if isinstance(module, nnx.Module):
        if isinstance(module, nnx.bridge.ToNNX) and not any(
            isinstance(v, nnx.Param) for _, v in nnx.iter_graph(module)
        ):
            raise PortingError(
                "the nnx.bridge.ToNNX wrapper holds no parameters yet: initialize it with example inputs first, "
                "nnx.bridge.ToNNX(linen_module, rngs=nnx.Rngs(0)).lazy_init(*inputs)"
            )
        return
    name = type(module).__name__
    if linen.is_linen(module):
        fix = f"wrap it: nnx.bridge.ToNNX({name}(...), rngs=nnx.Rngs(0)).lazy_init(*inputs)"
    elif linen.is_linen(getattr(module, "module", None)):  # a model object holding a linen module (e.g. Hugging Face's)
        fix = (
            "wrap the linen module it holds: nnx.bridge.ToNNX(model.module, rngs=nnx.Rngs(0)).lazy_init(*inputs); "
            "transfer_weights then fills it from the torch model (its own params are not used)"
        )
    elif isinstance(module, torch.nn.Module):
        fix = "the torch model goes first, its NNX port second"
    else:
        fix = "port it to flax.nnx (docs/PORTING.md), or wrap a linen module with nnx.bridge.ToNNX"
    raise PortingError(f"the second model is a {name}, not a flax.nnx.Module: {fix}")


def walk_torch(module: torch.nn.Module, rules: Sequence[Rule]) -> Tree:
    tree = Tree(Node("", module), [], [], {})

    def visit(node: Node) -> None:
        sub = node.module
        for name, param in sub._parameters.items():
            if param is not None:
                unit = Unit(LOOSE, join(node.path, name), sub, None, {"": param})
                node.children.append(unit)
                tree.units.append(unit)
        for name, buffer in sub._buffers.items():
            if buffer is not None and name not in sub._non_persistent_buffers_set:
                tree.extra[join(node.path, name)] = buffer
        for name, child in sub.named_children():
            path = join(node.path, name)
            rule = next((r for r in rules if isinstance(child, r.torch_types)), None)
            if rule is not None:
                unit = Unit(rule.name, path, child, rule, dict(child.state_dict(keep_vars=True)))
                node.children.append(unit)
                tree.units.append(unit)
            else:
                inner = Node(path, child)
                node.children.append(inner)
                tree.containers.append((path, child))
                visit(inner)

    rule = next((r for r in rules if isinstance(module, r.torch_types)), None)
    if rule is not None:  # the whole module is one layer
        unit = Unit(rule.name, "", module, rule, dict(module.state_dict(keep_vars=True)))
        tree.root.children.append(unit)
        tree.units.append(unit)
        return tree
    tree.containers.append(("", module))
    visit(tree.root)
    return tree


def walk_nnx(module: nnx.Module, rules: Sequence[Rule]) -> Tree:
    tree, seen = Tree(Node("", module), [], [], {}), set()

    def add(parent: Node, unit: Unit) -> None:
        parent.children.append(unit)
        tree.units.append(unit)

    def visit(node: Node) -> None:
        value, where = node.module, node.linen
        for name, child in attributes(value, sorted_names=where is not None):
            path = join(node.path, name)
            inside = None if where is None else (where[0], (*where[1], name))
            if isinstance(child, nnx.Variable):
                if isinstance(child, nnx.Param):
                    add(node, Unit(LOOSE, path, value, None, {"": child}, linen=inside))
                elif not isinstance(child, nnx.RngState):
                    tree.extra[path] = child
                continue
            if isinstance(child, nnx.Module):
                if id(child) in seen:
                    continue
                seen.add(id(child))
                rule = next((r for r in rules if isinstance(child, r.nnx_types)), None)
                if rule is not None:
                    add(node, Unit(rule.name, path, child, rule, dict(nnx_variables(child))))
                    continue
                tree.containers.append((path, child))
                if isinstance(child, nnx.bridge.ToNNX):
                    inside = (child, ())
            elif inside is not None and isinstance(child, dict) and (layer := linen.layer(child)) is not None:
                kinds, namespace, tensors = layer
                add(node, Unit("/".join(sorted(kinds)), path, namespace, None, tensors, kinds, inside))
                continue
            elif not isinstance(child, (dict, list, tuple, *_GRAPH_NODES)):
                continue
            inner = Node(path, child, linen=inside)
            node.children.append(inner)
            visit(inner)

    rule = next((r for r in rules if isinstance(module, r.nnx_types)), None)
    if rule is not None:  # the whole module is one layer
        add(tree.root, Unit(rule.name, "", module, rule, dict(nnx_variables(module))))
        return tree
    tree.containers.append(("", module))
    if isinstance(module, nnx.bridge.ToNNX):
        tree.root.linen = (module, ())
    seen.add(id(module))
    visit(tree.root)
    return tree


def nnx_variables(node, prefix: str = "") -> Iterator[tuple[str, nnx.Variable]]:
    """Every variable under ``node`` except RNG state, by dotted path, in definition order."""
    for name, value in attributes(node):
        path = join(prefix, name)
        if isinstance(value, nnx.Variable):
            if not isinstance(value, nnx.RngState):
                yield path, value
        else:
            yield from nnx_variables(value, path)


def attributes(node, sorted_names: bool = False) -> list[tuple[str, object]]:
    """A container's children by name; ``sorted_names``: in natural order (``Dense_2`` before
    ``Dense_10``), which restores each layer type's definition order from linen's automatic names."""
    if isinstance(node, dict):
        items = [(str(k), v) for k, v in node.items()]
    elif isinstance(node, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(node)]
    elif isinstance(node, _GRAPH_NODES):
        items = [
            (k, v) for k, v in vars(node).items() if not k.startswith(("_pytree__", "to_nnx__")) and k != "_length"
        ]
    else:
        return []
    return sorted(items, key=lambda item: linen.natural_key(item[0])) if sorted_names else items


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name
