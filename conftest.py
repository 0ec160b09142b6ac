"""Fixtures shared by tests/ and parity_tests/, the test processes' threads, and how the suite is
spread over workers (pytest-xdist)."""

from __future__ import annotations

import os

# One thread per test process. The tests' models are tiny: intra-op parallelism gains nothing on
# them, a test may run beside its own subprocesses or other xdist workers (`-n`), and a pool that
# spins while its core is taken slows a step tens of times (docs/PERFORMANCE.md, section 5). torch takes
# set_num_threads; its processes that the tests spawn (examples, DDP ranks, compare's workers) read
# OMP_NUM_THREADS. XLA:CPU gets --xla_cpu_multi_thread_eigen=false (its dots on one thread), here and
# in every JAX the tests spawn: its pool is left as XLA sizes it, the same in this process as in the
# processes it spawns, so that a run resumed here from a subprocess's checkpoint computes as the
# subprocess did (a pool of another size splits reductions otherwise). Benchmarks set and record
# their own thread counts (ml_patterns_bench.harness).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_cpu_multi_thread_eigen=false"]).strip()

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

from ml_patterns.molecules.prepare import prepare_dataset  # noqa: E402

torch.set_num_threads(1)  # this process's pool may already exist: set it, not just its default

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


# At most this many xdist workers (`-n auto`, the default): each imports both frameworks and compiles
# its own programs, and many of the tests start processes of their own.
MAX_WORKERS = 4


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """One worker per CPU this process may use (its affinity, not the machine's count), at most
    ``MAX_WORKERS``."""
    return min(len(os.sched_getaffinity(0)), MAX_WORKERS)


def pytest_collection_modifyitems(config, items):
    """On xdist workers, the slow tests first: `--dist loadfile` hands out whole modules in the order
    of their first test, so the modules holding long tests start early and a long test started last
    does not keep one worker busy while the others have finished. A single process keeps the files'
    order."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: files' order kept


@pytest.fixture(scope="session")
def run_folder(tmp_path_factory):
    """The test run's temporary folder, the same for every xdist worker (each worker's own
    temporary folder lies inside it): where what the workers share is kept."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture(scope="session", autouse=True)
def jax_compile_cache(run_folder):
    """JAX's persistent compilation cache for the test run, shared by the xdist workers and every
    process the tests start (through the environment): the tests build the same small models again
    and again, and a program compiled once is then loaded, not compiled again. JAX's own cache, keyed
    by the program, its compile options and the jaxlib version; in the run's temporary folder, so
    that each run starts empty. Benchmarks turn it off while they time compiles."""
    cache = run_folder / "jax-compile-cache"
    cache.mkdir(mode=0o700, exist_ok=True)
    settings = {"jax_compilation_cache_dir": str(cache), "jax_persistent_cache_min_compile_time_secs": 0.0}
    os.environ.update({name.upper(): str(value) for name, value in settings.items()})
    import jax

    for name, value in settings.items():
        jax.config.update(name, value)


@pytest.fixture(scope="session")
def default_dataset(tmp_path_factory):
    """The embedded default dataset (RDKit's NCI set), prepared once per test session (per worker)."""
    root = tmp_path_factory.mktemp("data") / "nci"
    manifest = prepare_dataset(root, progress=False)
    return root, manifest
