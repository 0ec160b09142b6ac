"""The application layer of ml-patterns: the ``ml-patterns`` command line (``cli``), the ``compare``
job and the porting toolkit with its parity reports (``porting``), and the drawing both use
(``figures``). Layered (pyproject's import-linter contract): ``cli`` over the benchmarks
(``ml_patterns_bench``), over ``compare`` and ``porting`` (which never import each other), over
``figures``, over the backends and the core; nothing below imports anything above it.
"""
