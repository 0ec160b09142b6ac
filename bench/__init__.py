"""Benchmarks, run by ``ml-patterns bench``. See ``bench.runner`` for the registry."""
