"""The architecture's layering, checked by import-linter's contracts in pyproject.toml."""

import tomllib
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_no_contract_has_an_exemption():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert {"ml_patterns_app", "bench"} <= set(
        next(c for c in contracts if "app layer" in c["name"])["forbidden_modules"]
    )
    assert [c["name"] for c in contracts if c.get("ignore_imports")] == []
