"""What a process needs set before JAX starts, kept apart from ``runtime`` so that a parent process
can ask without importing JAX (the contract: ``torch_impl.runtime``)."""

from __future__ import annotations

import os

# Our own switch for XLA's preallocation (JAX's own variable is overwritten: see memory_environment).
PREALLOCATE_OPTION = "ML_PATTERNS_JAX_PREALLOCATE"


def process_environment(devices: int, kind: str = "auto") -> dict[str, str]:
    """Environment variables for a process that will run on ``devices`` devices of ``kind``
    (``"cpu"``, ``"gpu"`` or ``"auto"``): the CPU devices JAX simulates, read when its backend starts
    (a GPU's devices are unaffected); on ``"cpu"``, JAX limited to its CPU platform, so that nothing
    (the default backend, a program exported for it) lands on a GPU the run did not choose; and
    ``memory_environment``."""
    environment = memory_environment()
    if devices > 1:
        environment["JAX_NUM_CPU_DEVICES"] = str(devices)
    if kind == "cpu":
        environment["JAX_PLATFORMS"] = "cpu"
    return environment


def memory_environment() -> dict[str, str]:
    """``XLA_PYTHON_CLIENT_PREALLOCATE=false``, set whatever the environment says, unless
    ``ML_PATTERNS_JAX_PREALLOCATE=1``: by default XLA takes 75% of a GPU when it starts, which would
    starve a torch process beside it and make its peak memory the pool's size, not what it used.
    An inherited ``XLA_PYTHON_CLIENT_PREALLOCATE=true`` (set for another program) must not decide it."""
    preallocate = os.environ.get(PREALLOCATE_OPTION, "0").lower() in ("1", "true", "yes")
    return {"XLA_PYTHON_CLIENT_PREALLOCATE": "true" if preallocate else "false"}
