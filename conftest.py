"""Fixtures shared by tests/ and parity_tests/."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

from ml_patterns.molecules.prepare import prepare_dataset

# Hypothesis profiles. CI machines are small and shared: the per-example deadline would make
# timing, not correctness, fail a test (deadline=None in both). "ci", the default wherever the tests
# run, is derandomized (examples drawn from a hash of each test, no example database): every run, in
# CI or on a laptop, checks the same examples, so a failure reproduces by running the test again, and
# print_blob prints the @reproduce_failure line of the failing example. "explore" draws fresh
# examples each run (fix them with pytest's --hypothesis-seed=N) to hunt for new failures: select it
# with HYPOTHESIS_PROFILE=explore or --hypothesis-profile=explore.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The tests' models are tiny: intra-op parallelism gains nothing on them, and on a busy 2-core
# machine torch's spinning worker threads slowed a training test twentyfold. Benchmarks (bench/)
# set and record their own thread counts.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def default_dataset(tmp_path_factory):
    """The embedded default dataset (RDKit's NCI set), prepared once per test session."""
    root = tmp_path_factory.mktemp("data") / "nci"
    manifest = prepare_dataset(root, progress=False)
    return root, manifest
