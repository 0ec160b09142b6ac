"""Fixtures shared by tests/ and parity_tests/."""

from __future__ import annotations

import pytest
from hypothesis import settings

from ml_patterns.prepare import prepare_dataset

# CI machines are small and shared: hypothesis' per-example deadline would make timing, not
# correctness, fail a test.
settings.register_profile("ml-patterns", deadline=None, print_blob=True)
settings.load_profile("ml-patterns")


@pytest.fixture(scope="session")
def default_dataset(tmp_path_factory):
    """The embedded default dataset (RDKit's NCI set), prepared once per test session."""
    root = tmp_path_factory.mktemp("data") / "nci"
    manifest = prepare_dataset(root, progress=False)
    return root, manifest
