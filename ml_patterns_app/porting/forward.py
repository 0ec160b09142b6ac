"""Layer by layer: every paired module's input and output on both sides, and the first that diverges.

torch side: forward pre-hooks and hooks. NNX side: flax has no interception of NNX module calls (sow
needs code inside the module), so for the duration of the call each watched module's class gets a
recording ``__call__`` (restored afterwards; only the watched instances record, and a module whose
``__call__`` calls its parent class's records once). Inside an ``nnx.bridge.ToNNX`` wrapper, linen's
own ``flax.linen.intercept_methods`` records the linen layers and containers, by module path. The NNX
module must run eagerly for this: layers called inside ``nnx.scan``/``nnx.vmap``/``jax.jit`` record
tracers, which are reported as such.

Which modules are watched: the layer pairs of ``map_weights`` (a Linear with a Linear...), and the
containers it paired along the two trees (the torch ``blocks.0`` with the NNX ``layers.0``).
Parameter-free modules (torch's ``nn.GELU``) have no counterpart to pair with: a divergence they cause
shows as the *input* of the next watched module, or as the output of their container.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from flax import linen as nn
from flax import nnx

from ml_patterns.parity import FORWARD, Tolerance
from ml_patterns_app.porting import inputs as io
from ml_patterns_app.porting.mapping import LOOSE, WeightMap, map_weights
from ml_patterns_app.porting.report import LayerReport, Row, compare_values
from ml_patterns_app.porting.rules import Rule


def compare_forward(
    torch_module: torch.nn.Module,
    nnx_module: nnx.Module,
    inputs,
    *,
    nnx_inputs=None,
    kwargs: Mapping | None = None,
    nnx_kwargs: Mapping | None = None,
    weight_map: WeightMap | None = None,
    rules: Sequence[Rule] = (),
    pairs: Mapping[str, str] | None = None,
    ignore: Iterable[str] = (),
    tolerance: Tolerance = FORWARD,
    reference: bool = True,
) -> LayerReport:
    """Runs both modules on the same inputs (in eval mode, restored afterwards) and compares every
    paired module's input and output, in torch's execution order.

    Args:
        inputs: the positional arguments (an array or a tuple of arrays; numpy or torch); floats go to
            both sides as float32, integers as int64 (torch) and int32 (JAX).
        nnx_inputs: other positional arguments for the NNX side (e.g. images as NHWC).
        kwargs: keyword arguments for both sides; ``nnx_kwargs`` replaces them on the NNX side.
        weight_map: the mapping (default: ``map_weights`` with ``rules``/``pairs``/``ignore``); one with
            problems (unmatched or mismatched tensors) raises ``PortingError``: the weights cannot agree.
        tolerance: per row (default: the policy's forward tolerance).
        reference: also run a float64 copy of the torch module, for the bounded fallback (see ``report``).

    Torch activations of channel-first layers (conv, batch and group norm) are moved to channels-last
    to compare; so is any torch activation whose shape only fits that way. Arrays whose shapes differ
    but broadcast to one of them (a torch ``[1, L]`` position buffer, a JAX ``[B, L]`` array) are
    compared broadcast, and the row says so.
    """
    weight_map = weight_map or map_weights(torch_module, nnx_module, rules=rules, pairs=pairs, ignore=ignore)
    weight_map.raise_if_problems()
    watched = _watched(weight_map)
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    nnx_args = args if nnx_inputs is None else (nnx_inputs if isinstance(nnx_inputs, tuple) else (nnx_inputs,))
    kwargs = dict(kwargs or {})
    nnx_kwargs = kwargs if nnx_kwargs is None else dict(nnx_kwargs)
    torch_events = _run_torch(torch_module, watched, io.to_torch(args), io.to_torch(kwargs))
    truth = None
    if reference:
        double = copy.deepcopy(torch_module).double()
        truth = _run_torch(double, watched, io.to_torch(args, torch.float64), io.to_torch(kwargs, torch.float64))
    nnx_events = _run_nnx(nnx_module, weight_map, watched, io.to_jax(nnx_args), io.to_jax(nnx_kwargs))
    rows = _rows(watched, torch_events, nnx_events, truth, tolerance)
    first = next((row for row in rows if not row.passed), None)
    ran = {row.torch_name for row in rows}
    layers = [w for w in watched if w.kind != "module"]
    one_sided, idle = _calls(watched, torch_events, nnx_events)
    scope = (
        f"compared {len(rows)} row(s): {len(layers) - len(idle) - len(one_sided)} of {len(layers)} paired layer(s) "
        f"and {len({w.torch_path for w in watched if w.kind == 'module'} & ran)} container(s); {weight_map.scope}"
        + (f"; called on one side only, compared through their containers: {', '.join(one_sided)}" if one_sided else "")
        + (f"; paired layers not called: {', '.join(idle)}" if idle else "")
    )
    problems = () if rows else ("nothing was compared: no paired layer or container ran on either side",)
    if not weight_map.pairs:
        problems += ("no layer or parameter is paired: only the two models' outputs could be compared",)
    where = _where(first, rows, watched) if rows else "Check that the inputs reach the model's paired layers."
    if first is not None and one_sided:
        where += f" Layers called on one side only: {', '.join(one_sided)}."
    if first is not None:
        where += "".join(f" Layer note: {note}." for note in _notes(watched, first))
    return LayerReport("forward", tuple(rows), first, where, scope, problems)


class _Watch:
    """One watched pair of modules: a layer (``kind`` its rule's name) or a container ("module");
    ``linen``: (ToNNX wrapper, module path) of a linen one, recorded by interception."""

    def __init__(self, kind, torch_path, nnx_path, nnx_module, channels_first, linen=None, pair=None):
        self.kind, self.torch_path, self.nnx_path = kind, torch_path, nnx_path
        self.nnx_module, self.channels_first, self.linen = nnx_module, channels_first, linen
        self.pair, self.bound = pair, None  # bound: the linen module instance seen running

    @property
    def label(self) -> str:
        return f"{self.torch_path or '<root>'} -> {self.nnx_path or '<root>'}"


def _watched(weight_map: WeightMap) -> list[_Watch]:
    watched = [
        _Watch(p.kind, p.torch.path, p.nnx.path, p.nnx.module, p.torch.rule.channels_first, p.nnx.linen, p)
        for p in weight_map.pairs
        if p.kind != LOOSE
    ]
    layers = {id(w.nnx_module) for w in watched}
    for t, n in weight_map.containers:
        if id(n.module) in layers:  # a module that is one layer as a whole
            continue
        if isinstance(n.module, nnx.Module):
            watched.append(_Watch("module", t.path, n.path, n.module, False))
        elif n.linen is not None and isinstance(n.module, dict):  # a linen module, by its variables' path
            watched.append(_Watch("module", t.path, n.path, n.module, False, n.linen))
    return watched


def _run_torch(module: torch.nn.Module, watched: list[_Watch], args, kwargs) -> list[tuple[int, str, list]]:
    named = dict(module.named_modules())
    events, handles = [], []
    for key, watch in enumerate(watched):
        target = named[watch.torch_path]
        handles.append(
            target.register_forward_pre_hook(
                lambda m, a, kw, key=key: events.append((key, "input", [io.first_array(a, kw)])), with_kwargs=True
            )
        )
        handles.append(
            target.register_forward_hook(lambda m, a, out, key=key: events.append((key, "output", io.arrays(out))))
        )
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()
        with torch.no_grad():
            module(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.training = training
    return events


_MODE_FLAGS = ("deterministic", "use_running_average")


def _run_nnx(module: nnx.Module, weight_map: WeightMap, watched: list[_Watch], args, kwargs) -> list:
    events, active, wrappers = [], set(), []
    keys = {id(w.nnx_module): key for key, w in enumerate(watched) if w.linen is None}
    linen_keys = {(id(w.linen[0]), w.linen[1]): key for key, w in enumerate(watched) if w.linen is not None}
    classes = list(dict.fromkeys(type(w.nnx_module) for w in watched if w.linen is None))
    if linen_keys:
        classes = list(dict.fromkeys([*classes, nnx.bridge.ToNNX]))
    originals = {cls: cls.__dict__.get("__call__") for cls in classes}

    def record(key, call, a, kw):
        events.append((key, "input", [io.first_array(a, kw)]))
        out = call(*a, **kw)
        events.append((key, "output", io.arrays(out)))
        return out

    def recording(call):
        @functools.wraps(call)
        def wrapper(self, *a, **kw):
            wrappers.append(id(self))  # the ToNNX wrapper whose linen layers are running
            try:
                key = keys.get(id(self))
                if key is None or id(self) in active:
                    return call(self, *a, **kw)
                active.add(id(self))
                try:
                    return record(key, functools.partial(call, self), a, kw)
                finally:
                    active.discard(id(self))
            finally:
                wrappers.pop()

        return wrapper

    def intercept(next_fun, a, kw, context):
        key = linen_keys.get((wrappers[-1] if wrappers else None, tuple(context.module.path)))
        if context.method_name != "__call__" or key is None:
            return next_fun(*a, **kw)
        watched[key].bound = watched[key].bound or context.module  # its settings, for the layer notes
        return record(key, next_fun, a, kw)

    modules = [m for _, m in weight_map.nnx_tree.containers] + [u.module for u in weight_map.nnx_tree.units]
    modes = [(m, flag, getattr(m, flag)) for m in modules for flag in _MODE_FLAGS if hasattr(m, flag)]
    try:
        module.eval()
        for cls in classes:
            cls.__call__ = recording(cls.__call__)
        with nn.intercept_methods(intercept):
            module(*args, **kwargs)
    finally:
        for cls, original in originals.items():
            if original is None:
                del cls.__call__
            else:
                cls.__call__ = original
        for m, flag, value in modes:
            setattr(m, flag, value)
    return events


def _notes(watched: list[_Watch], row: Row) -> list[str]:
    """The layer notes (epsilon, momentum...) of the layer ``row`` names; for a linen layer, from the
    module instance seen running (its variables alone do not hold its settings)."""
    watch = next((w for w in watched if (w.torch_path, w.nnx_path) == (row.torch_name, row.nnx_name)), None)
    if watch is None or watch.pair is None:
        return []
    if watch.pair.notes or watch.bound is None:
        return watch.pair.notes
    try:
        return watch.pair.torch.rule.notes(watch.pair.torch.module, watch.bound)
    except AttributeError:  # a linen layer without the setting the torch rule compares
        return []


def _calls(watched, torch_events, nnx_events) -> tuple[list[str], list[str]]:
    """(paired layers called on one side only, with the side; paired layers called on neither)."""
    torch_keys, nnx_keys = {e[0] for e in torch_events}, {e[0] for e in nnx_events}
    layers = [k for k, w in enumerate(watched) if w.kind != "module"]
    one_sided = [
        f"{watched[k].label} ({'torch' if k in torch_keys else 'nnx'} only)"
        for k in layers
        if (k in torch_keys) != (k in nnx_keys)
    ]
    idle = [watched[k].label for k in layers if k not in torch_keys | nnx_keys]
    return one_sided, idle


def _rows(watched, torch_events, nnx_events, truth, tolerance) -> list[Row]:
    by_call: dict[tuple[int, str], list] = {}
    for key, what, values in nnx_events:
        by_call.setdefault((key, what), []).append(values)
    # A module called on one side only has nothing to compare with: a container (a torch ModuleList is
    # iterated where linen's layer collection is called), or a layer whose weights the other side uses
    # without calling it (an embedding table indexed directly). What it computes reaches the outputs
    # of its containers, which are compared; the report lists it.
    torch_keys, nnx_keys = {e[0] for e in torch_events}, {e[0] for e in nnx_events}
    one_sided = torch_keys ^ nnx_keys
    seen: dict[tuple[int, str], int] = {}
    rows = []
    for index, (key, what, values) in enumerate(torch_events):
        if key in one_sided:
            continue
        call = seen[key, what] = seen.get((key, what), -1) + 1
        watch = watched[key]
        label = watch.label + (f" #{call + 1}" if call else "")
        others = by_call.get((key, what), [])
        if call >= len(others):
            rows.append(_missing(label, watch, what, values, f"called {call + 1}x in torch, {len(others)}x in nnx"))
            continue
        reference = truth[index][2] if truth is not None else None
        rows.append(_row(label, watch, what, values, others[call], reference, tolerance))
    for (key, what), others in by_call.items():
        extra = len(others) - seen.get((key, what), -1) - 1
        if extra > 0 and key not in one_sided:
            rows.append(_missing(watched[key].label, watched[key], what, [], f"called {extra} more time(s) in nnx"))
    return rows


def _row(label, watch, what, torch_values, nnx_values, reference, tolerance) -> Row:
    torch_values, nnx_values = [v for v in torch_values if v is not None], [v for v in nnx_values if v is not None]
    if not torch_values or not nnx_values:
        return _missing(label, watch, what, torch_values, "no array on one side")
    expected, actual = torch_values[0], nnx_values[0]
    notes = []
    if actual.dtype == object:
        return _missing(label, watch, what, torch_values, "nnx recorded no concrete value (traced?)")
    if len(torch_values) != len(nnx_values):
        notes.append(f"compared the first of {len(torch_values)} torch / {len(nnx_values)} nnx arrays")
    if expected.ndim >= 3 and (
        watch.channels_first or (expected.shape != actual.shape and np.moveaxis(expected, 1, -1).shape == actual.shape)
    ):
        expected, notes = np.moveaxis(expected, 1, -1), notes + ["torch moved to channels-last"]
        reference = None if reference is None else [np.moveaxis(reference[0], 1, -1)]
    truth = reference[0] if reference else None
    shown = expected.shape, actual.shape
    if expected.shape != actual.shape and (shape := _broadcast(expected.shape, actual.shape)) is not None:
        expected, actual = np.broadcast_to(expected, shape), np.broadcast_to(actual, shape)
        truth = None if truth is None or _broadcast(truth.shape, shape) != shape else np.broadcast_to(truth, shape)
        notes.append(f"compared broadcast to {list(shape)}: equal after broadcasting")
    if truth is not None and truth.shape != expected.shape:
        truth = None
    max_abs, max_rel, passed, note = compare_values(expected, actual, tolerance, truth)
    notes += [note] if note else []
    return Row(
        label,
        watch.torch_path,
        watch.nnx_path,
        what,
        *shown,
        max_abs,
        max_rel,
        tolerance,
        passed,
        "; ".join(notes),
    )


def _broadcast(a: tuple, b: tuple) -> tuple | None:
    """The shape both broadcast to, when it is one of them (a size-1 axis against a full one), else None."""
    try:
        shape = np.broadcast_shapes(a, b)
    except ValueError:
        return None
    return shape if shape in (a, b) and len(a) == len(b) else None


def _missing(label, watch, what, values, note) -> Row:
    shape = tuple(values[0].shape) if values and values[0] is not None else ()
    return Row(label, watch.torch_path, watch.nnx_path, what, shape, (), np.nan, np.nan, FORWARD, False, note)


def _where(first: Row | None, rows: list[Row], watched: list[_Watch]) -> str:
    if first is None:
        return "Every paired layer agrees."
    watch = next(w for w in watched if w.torch_path == first.torch_name and w.nnx_path == first.nnx_name)
    index = rows.index(first)
    before = f"after {rows[index - 1].label} ({rows[index - 1].what}), which agrees" if index else "at the start"
    if first.what == "input":
        parents = [
            w
            for w in watched
            if w.kind == "module"
            and w.torch_path != first.torch_name
            and (w.torch_path == "" or first.torch_name.startswith(w.torch_path + "."))
        ]
        parent = max(parents, key=lambda w: len(w.torch_path)).label if parents else "the caller"
        return (
            f"First divergence: the input of {watch.label}, {before}: look at the code between them "
            f"in the forward of {parent} (activations, masks, reshapes, scaling)."
        )
    if watch.kind == "module":
        return (
            f"First divergence: the output of {watch.label}; its input and every paired layer inside it agree: "
            f"look at its own forward code after its last paired layer."
        )
    return (
        f"First divergence: the {watch.kind} layer {watch.label}: its input agrees, its output does not: "
        f"the layer itself (weights, hyperparameters such as epsilon, or its port)."
    )
