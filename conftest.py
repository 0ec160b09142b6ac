"""Fixtures shared by tests/ and parity_tests/."""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings

from ml_patterns.molecules.prepare import prepare_dataset

# CI machines are small and shared: hypothesis' per-example deadline would make timing, not
# correctness, fail a test.
settings.register_profile("ml-patterns", deadline=None, print_blob=True)
settings.load_profile("ml-patterns")

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
