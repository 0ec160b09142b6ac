"""Traced programs kept on disk across runs (``jax.export``), so that a later run skips tracing.

JAX's persistent compilation cache (``runtime.enable_compile_cache``) spares a later run XLA's
compile, not the Python tracing and the lowering that come before it (they make the cache's key):
about 0.35 s for each batch shape of compare's train step, half of a second run's warm-up
(docs/PERFORMANCE.md). A ``ProgramCache`` keeps each program as ``jax.export`` serializes it (its
StableHLO and signature); a later run reads it back and runs ``jax.jit(exported.call)``, which
lowers in a few milliseconds and whose compiled form the compilation cache then supplies.

An entry is served only when it holds the program tracing would make now. Its key covers
- the program's name and the caller's ``context``: everything the traced function closes over (for
  the train step: ``describe_graph`` of the model, every static attribute identified exactly; the
  seed; the optimizer's config);
- the arguments' tree structure, shapes, dtypes and weak types (placement is ``jax.jit``'s own
  concern: a program is exported for one device, and one called on more runs as plain ``jax.jit``);
- the versions of Python, jax, jaxlib, flax, optax and numpy, jax's whole configuration (precision,
  x64, PRNG implementation...) and the devices (kind, platform version);
and each entry lists the file of every module loaded when it was traced, with its size and
modification time: if any of them changed or is gone, the program is traced again and the entry
replaced. While one of those files is newer than the process (edited after it started, perhaps
after it was imported: the code it runs may be older than the file), its entries are neither read
nor written. Not covered, so not to be cached: a function
whose trace depends on what it reads at trace time from outside its modules' source (environment
variables, data files, globals set by a script).

What cannot be kept runs as plain ``jax.jit``, with a warning: a program ``jax.export`` cannot
serialize (host callbacks such as ``jax.debug.print``), one whose result is not shaped as declared.
The cache is consulted while ``jax.jit`` traces a new argument signature; a call on a known one is
an ordinary jitted call. An entry is one file, replaced atomically; one that cannot be read
is traced again (with a warning). Whoever may write to the directory chooses what runs, as with the
compilation cache: it must be the user's own (``ml_patterns.io.private_directory``).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import time
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import export

from ml_patterns.io import atomic_write_bytes, private_directory

# Bumped whenever an entry's layout or key changes: older entries are then never read.
FORMAT = 2
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "numpy")
# The process's start is read rounded down to a clock tick, so never late; a file's modification
# time comes from a coarse clock that may lag by a tick: one modified this little before the start
# may have been modified after it.
_CLOCK_MARGIN_NS = 20_000_000

OutTree = Callable[[tuple], Any]  # the call's arguments -> the PyTreeDef of its result


class Unidentifiable(ValueError):
    """A static value whose identity no text can capture (a lambda, a closure, an object without a
    value-based repr): a program closing over it cannot be keyed."""


class ProgramCache:
    """A directory of traced programs (created mode 0700; refused if others may write to it)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = private_directory(directory, "the program cache")
        self._file_states: dict[str, list[int] | None] = {}  # stat()ed once per cache object (compare: once per run)

    def program(
        self,
        jitted: Callable,
        name: str,
        *,
        context: str,
        out_tree: OutTree,
        donate_argnums: Sequence[int] = (),
    ) -> CachedProgram:
        """``jitted`` (a ``jax.jit`` function of positional pytree arguments) served from this cache.

        ``context``: a deterministic description of everything ``jitted`` closes over (see the
        module docstring); ``out_tree(args)``: the tree structure of ``jitted(*args)``'s result,
        which a program read back cannot tell without tracing; ``donate_argnums``: as ``jax.jit``'s.
        """
        return CachedProgram(self, jitted, name, context, out_tree, tuple(donate_argnums))

    # -- entries: one file, a JSON header line then the serialized program ----------------------
    def load(self, stem: str) -> export.Exported | None:
        """The entry ``stem``'s program, or None when there is none or its modules changed."""
        path = self.directory / f"{stem}.jaxprogram"
        try:
            header, _, payload = path.read_bytes().partition(b"\n")
        except FileNotFoundError:
            return None
        try:
            recorded = json.loads(header)
            if recorded.get("format") != FORMAT:
                return None
            modules = recorded["modules"]
            if any(self._file_state(file) != state for file, state in modules.items()) or _changed_lately(modules):
                return None  # other code than the entry's, or maybe other code than this process runs
            return export.deserialize(bytearray(payload))
        except Exception as error:  # a damaged entry is a cache miss, never a failed run
            warnings.warn(f"unreadable program cache entry {path} ({error!r}): tracing again", stacklevel=4)
            return None

    def store(self, stem: str, payload: bytes) -> None:
        """Writes the entry, unless a loaded module's file is newer than this process."""
        modules = {file: self._file_state(file) for file in _loaded_module_files()}
        changed = _changed_lately(modules)
        if changed:
            warnings.warn(
                f"{stem} not kept in the program cache: {changed[0]} changed after this process started "
                "(the traced program may be its older code)",
                stacklevel=4,
            )
            return
        header = json.dumps({"format": FORMAT, "modules": modules}).encode()
        try:
            atomic_write_bytes(self.directory / f"{stem}.jaxprogram", header + b"\n" + payload)
        except OSError as error:  # a full disk costs the next run a trace, not this run
            warnings.warn(f"could not write to the program cache {self.directory}: {error}", stacklevel=4)

    def _file_state(self, path: str) -> list[int] | None:
        if path not in self._file_states:
            try:
                info = os.stat(path)
                self._file_states[path] = [info.st_size, info.st_mtime_ns]
            except OSError:
                self._file_states[path] = None
        return self._file_states[path]


class CachedProgram:
    """Calls like the ``jax.jit`` function it stands for; it is itself a jitted function, whose
    trace (once per argument signature) reads the program from its ``ProgramCache`` or traces,
    exports and stores it, and calls it: a call is as cheap as any jitted call. What cannot be
    kept is left to the jitted function itself."""

    def __init__(self, cache: ProgramCache, jitted, name: str, context: str, out_tree: OutTree, donate_argnums):
        self.cache, self.jitted, self.name = cache, jitted, name
        self.context, self.out_tree = context, out_tree
        self._dispatch = jax.jit(self._traced, donate_argnums=donate_argnums)

    def __call__(self, *args):
        return self._dispatch(*args)

    def compilations(self) -> int:
        """Programs compiled so far: one per argument signature."""
        return int(self._dispatch._cache_size())  # a jitted function's count of its executables

    def _traced(self, *args):
        """Runs while ``jax.jit`` traces a new argument signature; ``args`` are tracers."""
        leaves, treedef = jax.tree.flatten(args)
        specs = [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, weak_type=leaf.aval.weak_type) for leaf in leaves]
        out_treedef = self.out_tree(args)
        described = [(spec.shape, str(spec.dtype), spec.weak_type) for spec in specs]
        key = repr((FORMAT, self.name, self.context, str(treedef), described, _environment()))
        stem = f"{self.name}-{hashlib.sha256(key.encode()).hexdigest()[:40]}"
        exported = self.cache.load(stem)
        try:
            if exported is None:
                exported = export.export(jax.jit(self._flat(treedef, out_treedef)))(*specs)
                self.cache.store(stem, bytes(exported.serialize()))
            return jax.tree.unflatten(out_treedef, exported.call(*leaves))
        except Exception as error:  # not exportable (host callbacks...): jit as usual; a bug re-raises there
            warnings.warn(f"{self.name} not kept in the program cache ({error}): plain jax.jit", stacklevel=2)
            return self.jitted(*args)

    def _flat(self, treedef, out_treedef) -> Callable:
        """``jitted`` over the flat list of leaves: a serialized program keeps no custom pytree."""

        def flat(*leaves):
            result = self.jitted(*jax.tree.unflatten(treedef, leaves))
            result_leaves, result_treedef = jax.tree.flatten(result)
            if result_treedef != out_treedef:  # e.g. a call that adds state: not a fixed signature
                raise TypeError(f"out_tree says {out_treedef}, the function returned {result_treedef}")
            return result_leaves

        return flat


def describe_graph(graphdef: Any) -> str:
    """A Flax NNX graph definition as text that differs whenever two models could trace differently:
    every node's and variable's type (module and qualified name) and metadata, every static
    attribute identified by value (functions by module and name, arrays by content, dataclasses by
    every field). Raises ``Unidentifiable`` for a value it cannot identify."""
    parts = []
    for node in graphdef.nodes:
        fields = dataclasses.fields(node) if dataclasses.is_dataclass(node) else ()
        parts.append((type(node).__name__, [(f.name, identity(getattr(node, f.name))) for f in fields]))
    for name, attribute in graphdef.attributes:
        value = getattr(attribute, "value", None) if type(attribute).__name__ == "Static" else None
        parts.append((identity(name), type(attribute).__name__, identity(value)))
    return repr(parts)


def identity(value: Any) -> str:
    """``value`` as text equal for equal values and different for different ones, or
    ``Unidentifiable``; see ``describe_graph``."""
    if value is None or isinstance(value, bool | int | float | complex | str | bytes):
        return f"{type(value).__name__}:{value!r}"
    if isinstance(value, enum.Enum):
        return f"{_qualified(type(value))}.{value.name}"
    if isinstance(value, type):
        return _qualified(value)
    if isinstance(value, np.dtype):
        return f"dtype:{value.str}"
    if isinstance(value, np.ndarray | np.generic | jax.Array):
        array = np.asarray(value)
        return f"array:{array.dtype.str}{array.shape}:{hashlib.sha256(array.tobytes()).hexdigest()}"
    if isinstance(value, jax.tree_util.PyTreeDef):
        return f"treedef:{value}"
    if isinstance(value, tuple | list):
        return f"{type(value).__name__}[{', '.join(identity(item) for item in value)}]"
    if isinstance(value, Mapping):
        items = sorted(f"{identity(k)}: {identity(v)}" for k, v in value.items())
        return f"{_qualified(type(value))}{{{', '.join(items)}}}"
    if isinstance(value, set | frozenset):
        return f"{type(value).__name__}{{{', '.join(sorted(identity(item) for item in value))}}}"
    if dataclasses.is_dataclass(value):
        fields = (f"{f.name}={identity(getattr(value, f.name))}" for f in dataclasses.fields(value))
        return f"{_qualified(type(value))}({', '.join(fields)})"
    if isinstance(value, functools.partial):
        keywords = sorted(f"{k}={identity(v)}" for k, v in value.keywords.items())
        return f"partial({identity(value.func)}, {identity(value.args)}, {keywords})"
    if hasattr(value, "__wrapped__"):  # jax.jit, functools.wraps
        return f"wrapped:{identity(value.__wrapped__)}"
    if type(value).__name__ in ("custom_jvp", "custom_vjp") and hasattr(value, "fun"):  # jax.nn.relu...
        return f"{type(value).__name__}:{identity(value.fun)}"
    if isinstance(value, types.FunctionType):
        if value.__closure__ or "<" in value.__qualname__:  # a closure, a lambda or a local function
            raise Unidentifiable(f"the function {value.__qualname__} (a closure or local function)")
        return f"function:{value.__module__}.{value.__qualname__}"
    if isinstance(value, types.BuiltinFunctionType | np.ufunc):
        return f"builtin:{getattr(value, '__module__', None)}.{value.__name__}"
    raise Unidentifiable(f"a {_qualified(type(value))} static attribute")


def _qualified(kind: type) -> str:
    if "<locals>" in kind.__qualname__:
        raise Unidentifiable(f"the local class {kind.__qualname__}")
    return f"{kind.__module__}.{kind.__qualname__}"


_ENVIRONMENT: str | None = None


def _environment() -> str:
    """Versions, jax's configuration and devices, as a string (jax's configuration can change while
    a process runs, so it is read each time; the rest once)."""
    global _ENVIRONMENT
    if _ENVIRONMENT is None:
        versions = {name: importlib.metadata.version(name) for name in _VERSIONED}
        devices = [(str(d), d.device_kind, d.client.platform_version) for d in jax.devices()]
        _ENVIRONMENT = repr((platform.python_version(), sorted(versions.items()), devices))
    return repr((_ENVIRONMENT, sorted(jax.config.values.items())))


def _changed_lately(modules: dict[str, list[int] | None]) -> list[str]:
    """The files of ``modules`` (path -> [size, mtime_ns]) modified since about when this process
    started: the code it imported from them may be older than what they hold."""
    started = _process_start_ns()
    return [file for file, state in modules.items() if state and state[1] > started - _CLOCK_MARGIN_NS]


def _loaded_module_files() -> list[str]:
    return sorted({str(Path(m.__file__)) for m in list(sys.modules.values()) if getattr(m, "__file__", None)})


@functools.cache
def _process_start_ns() -> int:
    """When this process started, on the wall clock (Linux: its start in clock ticks since boot,
    from /proc, against CLOCK_BOOTTIME), else when this module was first asked."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        running_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - ticks * 10**9 // os.sysconf("SC_CLK_TCK")
        return time.time_ns() - running_ns
    except (OSError, IndexError, ValueError, AttributeError):  # no /proc, no CLOCK_BOOTTIME
        return time.time_ns()
