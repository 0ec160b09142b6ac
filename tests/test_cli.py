import shutil
import subprocess
import sys

from ml_patterns.cli import main


def test_info_prints_the_manifest(default_dataset, capsys):
    assert main(["info", str(default_dataset[0]), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "molecules 4991 kept of 4999 rows" in out
    assert "TPSA" in out and "checksums: all" in out


def test_info_on_a_directory_that_is_not_a_dataset(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "manifest.json not found" in capsys.readouterr().err


def test_info_verify_fails_on_tampering(default_dataset, tmp_path, capsys):
    root = tmp_path / "nci"
    shutil.copytree(default_dataset[0], root)
    (root / "vocab.json").write_text("{}")
    assert main(["info", str(root), "--verify"]) == 1
    assert "vocab.json" in capsys.readouterr().err


def test_prepare_with_user_csv(tmp_path, capsys):
    csv = tmp_path / "mine.csv"
    csv.write_text("smiles,y\nCCO,1\nCCN,2\nCCC,3\n")
    out = tmp_path / "ds"
    assert main(["prepare", "--out", str(out), "--csv", str(csv), "--target-cols", "y", "--quiet",
                 "--val-fraction", "0", "--test-fraction", "0"]) == 0
    assert "molecules 3 kept of 3 rows" in capsys.readouterr().out
    assert main(["prepare", "--out", str(out), "--csv", str(csv), "--target-cols", "y", "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_console_script_does_not_load_a_framework_for_core_commands():
    code = "import sys; from ml_patterns.cli import main; main(['--version'])"
    probe = "import sys, ml_patterns.cli, ml_patterns.data, ml_patterns.molecules.prepare; print(sorted(m for m in ('torch', 'jax') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
