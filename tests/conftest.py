"""Fixtures shared by modules of tests/."""

from __future__ import annotations

import pytest
from filelock import FileLock

from tests import bench_quick


@pytest.fixture(scope="session")
def quick_report(default_dataset, run_folder):
    """``(out, report)``: the tiny ``bench --quick`` run (tests/bench_quick.py), made once per test
    run. Under xdist (``-n``, the default) its two modules may run on different workers: the first
    worker to ask makes it, behind a file lock in the run's shared temporary folder, and the others
    read what it wrote (pytest-xdist's recipe for a session fixture made once)."""
    out = run_folder / "bench-quick"
    with FileLock(f"{out}.lock"):
        if not (out / bench_quick.REPORT).is_file():
            bench_quick.run(default_dataset[0], out)
    return out, bench_quick.read(out)
