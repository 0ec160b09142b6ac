"""What a new user reads: help without markup, progress bars only on a terminal, a factory module
found in the working directory."""

import textwrap

import pytest

from ml_patterns_app.cli import build_parser, main
from ml_patterns_app.porting.command import load_factory


def test_the_top_level_help_has_no_raw_markup(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "ml-patterns command line" in out and "``" not in out


def test_prepare_off_a_terminal_writes_no_carriage_return_updates(tmp_path, capsys):
    (tmp_path / "mols.csv").write_text("smiles,y\n" + "".join(f"{'C' * n}O,{n}\n" for n in range(1, 30)))
    argv = ["prepare", "--csv", str(tmp_path / "mols.csv"), "--target-cols", "y", "--out", str(tmp_path / "ds")]
    assert main([*argv, "--val-fraction", "0", "--test-fraction", "0"]) == 0  # no --quiet
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "parsing molecules" not in captured.err
    assert "molecules 29 kept of 29 rows" in captured.out


def test_a_factory_module_in_the_working_directory_imports_without_pythonpath(tmp_path, monkeypatch):
    (tmp_path / "my_port_i26.py").write_text(
        textwrap.dedent("""
        def build():
            return "built"
    """)
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    assert load_factory("my_port_i26:build", "--torch")() == "built"
