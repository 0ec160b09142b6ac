"""Fixtures shared by modules of tests/."""

from __future__ import annotations

import pytest

from tests import bench_quick


@pytest.fixture(scope="session")
def quick_report(default_dataset, tmp_path_factory):
    """``(out, report)``: the tiny ``bench --quick`` run (tests/bench_quick.py), made once. Its
    modules share the xdist group "bench_quick", so one worker makes it."""
    out = tmp_path_factory.mktemp("bench")
    return out, bench_quick.run(default_dataset[0], out)
