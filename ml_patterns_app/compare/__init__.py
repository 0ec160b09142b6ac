"""``ml-patterns compare``: the same training run in PyTorch and in JAX, on real molecules or on your
own model pair (``compare_models``).

- ``settings``: what the run is (``CompareSettings``), what one worker is asked (``WorkerJob``),
  the backends and their labels;
- ``runner``: the parent process: prepares the data, launches one worker per backend (and torch again
  from the initial weights one ulp off, K times, and in float64: the verdict's noise);
- ``launch``: running one worker from the parent: its live progress, Ctrl-C, the machine's load meanwhile;
- ``worker``: one backend's training run, in its own process (``python -m ml_patterns_app.compare.worker``),
  of a ``workload``: the molecule models (``workload``) or your pair (``pair``; ``torch_side`` and
  ``jax_side`` hold each backend's part), through the backend's ``runtime`` (FLOP count,
  torch.compile: ``runtime.count_step_flops``, ``runtime.compile_loss``);
- ``report``: the two runs' losses, step by step and epoch by epoch, against the measured float32
  noise (``ml_patterns.verdict``), the metrics and speed side by side, the verdict; ``speed``: each
  run's steady state, rates and whether its timing is reliable; ``summary``: ``report.md``'s text;
- ``precision_runs``: ``--precision bf16-mixed``: the noise measured in bfloat16, and each backend's
  distance from its own float32 run;
- ``written``: ``report.md``, ``results.json`` and the plots;
- ``models``: ``compare_models``, your pair from Python.
"""

import importlib

# The public names, each imported from its module on first use (PEP 562): a worker process
# (``python -m ml_patterns_app.compare.worker`` imports this package first) then loads what it runs,
# not the parent's runner, its report writer and matplotlib.
_EXPORTS = {"compare_models": "ml_patterns_app.compare.models", "run_compare": "ml_patterns_app.compare.runner"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups find it without coming here
    return value
