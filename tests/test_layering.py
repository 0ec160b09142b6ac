"""The architecture's layering, checked by import-linter's contracts in pyproject.toml, and what the
distribution installs."""

import tomllib
import warnings
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    "ml_patterns_app.cli",
    "ml_patterns_bench",
    "ml_patterns_app.compare",
    "ml_patterns_app.porting",
    "ml_patterns_app.figures",
    "torch_impl | jax_impl",
    "ml_patterns",
]


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_import_contracts_hold(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_one_layers_contract_orders_every_package_with_no_exemption():
    (layers,) = [c for c in _contracts() if c["type"] == "layers"]
    assert layers["layers"] == LAYERS
    assert [c["name"] for c in _contracts() if c.get("ignore_imports") or c.get("ignore_imports_of")] == []
    assert {"ml_patterns_app", "ml_patterns_bench"} <= set(
        next(c for c in _contracts() if "app layer" in c["name"])["forbidden_modules"]
    )


def test_the_benchmarks_install_as_ml_patterns_bench_and_nothing_as_bench():
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    distribution = Distribution()
    with warnings.catch_warnings():  # setuptools' deprecation notices about other fields: not this test's subject
        warnings.simplefilter("ignore")
        apply_configuration(distribution, ROOT / "pyproject.toml")
    top_level = {package.split(".")[0] for package in distribution.packages}
    assert top_level == {"ml_patterns", "ml_patterns_app", "ml_patterns_bench", "torch_impl", "jax_impl"}
    assert distribution.package_dir == {"ml_patterns_bench": "bench"}
    assert (ROOT / "ml_patterns_bench").resolve() == (ROOT / "bench").resolve()  # the checkout's link
