"""Traced programs kept on disk across runs (``jax.export``), so that a later run skips tracing.

JAX's persistent compilation cache (``runtime.enable_compile_cache``) spares a later run XLA's
compile, not the Python tracing and the lowering that come before it (they make the cache's key):
about 0.35 s for each batch shape of compare's train step, half of a second run's warm-up
(docs/PERFORMANCE.md). A ``ProgramCache`` keeps each program as ``jax.export`` serializes it (its
StableHLO and signature); a later run reads it back and runs ``jax.jit(exported.call)``, which
lowers in a few milliseconds and whose compiled form the compilation cache then supplies.

An entry is served only when it holds the program tracing would make now. Its key covers
- the program's name and the caller's ``context``: everything the traced function closes over (for
  the train step: the model's graph definition with every static attribute, such as its config; the
  seed; the optimizer's config);
- the arguments' tree structure, shapes, dtypes, weak types and placements;
- the versions of Python, jax, jaxlib, flax, optax and numpy, jax's whole configuration (precision,
  x64, PRNG implementation...) and the devices;
and each entry lists the file of every module loaded when it was traced, with its size and
modification time: if any of them changed or is gone, the program is traced again and the entry
replaced. Not covered, so not to be cached: a function whose trace depends on what it reads at trace
time from outside its modules' source (environment variables, data files, globals set by a script).

Entries are written atomically; one that cannot be read is traced again (with a warning). Whoever
may write to the directory chooses what runs, as with the compilation cache: it must be the user's
own (``ml_patterns.io.private_directory``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
from jax import export

from ml_patterns.io import atomic_write_bytes, atomic_write_text, private_directory

# Bumped whenever an entry's layout or key changes: older entries are then never read.
FORMAT = 1
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "numpy")

OutTree = Callable[[tuple], Any]  # the call's arguments -> the PyTreeDef of its result


class ProgramCache:
    """A directory of traced programs (created mode 0700; refused if others may write to it)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = private_directory(directory, "the program cache")
        self._file_states: dict[str, list[int] | None] = {}  # stat()ed once per process

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

    # -- entries ------------------------------------------------------------------------------
    def load(self, stem: str) -> export.Exported | None:
        """The entry ``stem``'s program, or None when there is none or its modules changed."""
        manifest, program = self.directory / f"{stem}.json", self.directory / f"{stem}.jaxexport"
        if not manifest.is_file():
            return None
        try:
            recorded = json.loads(manifest.read_text())
            if recorded.get("format") != FORMAT:
                return None
            if any(self._file_state(path) != state for path, state in recorded["modules"].items()):
                return None
            return export.deserialize(bytearray(program.read_bytes()))
        except Exception as error:  # a damaged entry is a cache miss, never a failed run
            warnings.warn(f"unreadable program cache entry {manifest} ({error!r}): tracing again", stacklevel=4)
            return None

    def store(self, stem: str, exported: export.Exported) -> None:
        """Writes the program, then its manifest (which makes the entry visible)."""
        modules = {path: self._file_state(path) for path in _loaded_module_files()}
        try:
            atomic_write_bytes(self.directory / f"{stem}.jaxexport", bytes(exported.serialize()))
            atomic_write_text(self.directory / f"{stem}.json", json.dumps({"format": FORMAT, "modules": modules}))
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
    """Calls like the ``jax.jit`` function it stands for, compiling one program per argument
    signature; each is read from its ``ProgramCache`` when there, else traced and stored."""

    def __init__(self, cache: ProgramCache, jitted, name: str, context: str, out_tree: OutTree, donate_argnums):
        self.cache, self.jitted, self.name = cache, jitted, name
        self.context, self.out_tree, self.donate_argnums = context, out_tree, donate_argnums
        self._programs: dict[tuple, tuple[Callable, Any]] = {}

    def __call__(self, *args):
        leaves, treedef = jax.tree.flatten(args)
        signature = (treedef, tuple(_leaf_signature(leaf) for leaf in leaves))
        found = self._programs.get(signature)
        if found is None:
            found = self._programs[signature] = self._program(args, leaves, treedef, signature)
        call, out_treedef = found
        return jax.tree.unflatten(out_treedef, call(*leaves))

    def compilations(self) -> int:
        """Programs compiled so far: one per argument signature."""
        return len(self._programs)

    def _program(self, args: tuple, leaves: list, treedef, signature: tuple) -> tuple[Callable, Any]:
        out_treedef = self.out_tree(args)
        described = [(tuple(shape), str(dtype), weak, repr(place)) for shape, dtype, weak, place in signature[1]]
        key = repr((FORMAT, self.name, self.context, str(treedef), described, _environment()))
        stem = f"{self.name}-{hashlib.sha256(key.encode()).hexdigest()[:40]}"
        exported = self.cache.load(stem)
        if exported is None:
            exported = export.export(jax.jit(self._flat(treedef, out_treedef)))(*leaves)
            self.cache.store(stem, exported)
        counts = [len(jax.tree.leaves(arg)) for arg in args]
        starts = [sum(counts[:i]) for i in range(len(args))]
        donated = tuple(j for i in self.donate_argnums for j in range(starts[i], starts[i] + counts[i]))
        return jax.jit(exported.call, donate_argnums=donated), out_treedef

    def _flat(self, treedef, out_treedef) -> Callable:
        """``jitted`` over the flat list of leaves: a serialized program keeps no custom pytree."""

        def flat(*leaves):
            result = self.jitted(*jax.tree.unflatten(treedef, leaves))
            result_leaves, result_treedef = jax.tree.flatten(result)
            if result_treedef != out_treedef:
                raise TypeError(f"{self.name}: out_tree says {out_treedef}, the function returned {result_treedef}")
            return result_leaves

        return flat


def _leaf_signature(leaf: Any) -> tuple:
    # Objects, not their text: this runs for every leaf at every call (the key's text is made once).
    return (leaf.shape, leaf.dtype, getattr(leaf, "weak_type", False), getattr(leaf, "sharding", None))


_ENVIRONMENT: str | None = None


def _environment() -> str:
    """Versions, jax's configuration and devices, as a string (jax's configuration can change while
    a process runs, so it is read each time; the rest once)."""
    global _ENVIRONMENT
    if _ENVIRONMENT is None:
        versions = {name: importlib.metadata.version(name) for name in _VERSIONED}
        _ENVIRONMENT = repr((platform.python_version(), sorted(versions.items()), [str(d) for d in jax.devices()]))
    return repr((_ENVIRONMENT, sorted(jax.config.values.items())))


def _loaded_module_files() -> list[str]:
    return sorted({str(Path(m.__file__)) for m in list(sys.modules.values()) if getattr(m, "__file__", None)})
