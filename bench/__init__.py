"""Benchmarks, run by ``ml-patterns bench``. See ``ml_patterns_bench.runner`` for the registry.

This folder installs as ``ml_patterns_bench`` (pyproject's package-dir; in a checkout,
``ml_patterns_bench`` is a link to it): import it by that name, never as ``bench``."""
