"""``ml-patterns compare``: the same training run in PyTorch and in JAX, on real molecules.

- ``settings``: what the run is (``CompareSettings``), what one worker is asked (``WorkerJob``),
  the backends and their labels;
- ``runner``: the parent process: prepares the data, launches one worker per backend (and torch again
  from the initial weights one ulp off, K times, and in float64: the verdict's noise), shows their
  live progress, stops them on Ctrl-C;
- ``worker``: one backend's training run, in its own process (``python -m ml_patterns_app.compare.worker``);
- ``report``: the two runs' losses, step by step and epoch by epoch, against the measured float32
  noise (``ml_patterns.verdict``), the metrics and speed side by side, the verdict;
- ``written``: ``report.md``, ``results.json`` and the plots.
"""

from ml_patterns_app.compare.runner import run_compare

__all__ = ["run_compare"]
