"""Benchmarks, run by ``ml-patterns bench``. See ``ml_patterns_bench.runner`` for the registry."""
