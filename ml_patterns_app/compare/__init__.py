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

from ml_patterns_app.compare.models import compare_models
from ml_patterns_app.compare.runner import run_compare

__all__ = ["compare_models", "run_compare"]
