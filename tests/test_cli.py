import json
import shutil
import subprocess
import sys

import pytest

from ml_patterns_app import cli
from ml_patterns_app.cli import build_parser, main


def test_info_prints_the_manifest(default_dataset, capsys):
    assert main(["info", str(default_dataset[0]), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "molecules 4991 kept of 4999 rows" in out
    assert "TPSA" in out and "checksums: all" in out


def test_info_json_prints_the_raw_manifest(default_dataset, capsys):
    import json

    assert main(["info", str(default_dataset[0]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((default_dataset[0] / "manifest.json").read_text())


def test_info_on_a_directory_that_is_not_a_dataset(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "manifest.json not found" in err and "Traceback" not in err


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
    assert (
        main(
            [
                "prepare",
                "--out",
                str(out),
                "--csv",
                str(csv),
                "--target-cols",
                "y",
                "--quiet",
                "--val-fraction",
                "0",
                "--test-fraction",
                "0",
            ]
        )
        == 0
    )
    assert "molecules 3 kept of 3 rows" in capsys.readouterr().out
    assert main(["prepare", "--out", str(out), "--csv", str(csv), "--target-cols", "y", "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_prepare_refuses_bad_flags_in_one_line(tmp_path, capsys):
    csv = tmp_path / "mine.csv"
    csv.write_text("smiles,y\nCCO,1\n")
    assert main(["prepare", "--out", str(tmp_path / "ds"), "--csv", str(csv)]) == 2
    assert "prepare: error: --csv needs --target-cols" in capsys.readouterr().err
    assert main(["prepare", "--out", str(tmp_path / "ds"), "--val-fraction", "0.7", "--test-fraction", "0.5"]) == 2
    assert "val_fraction + test_fraction must leave some molecules" in capsys.readouterr().err


def test_rdkit_properties_are_checked_against_the_accepted_names(capsys):
    with pytest.raises(SystemExit, match="^2$") as exit_info:
        build_parser().parse_args(["prepare", "--rdkit-properties", "MolWt,LogP"])
    assert exit_info.value.code == 2
    assert "unknown RDKit propert(y/ies) ['LogP']; accepted: MolLogP,MolWt," in capsys.readouterr().err
    assert build_parser().parse_args(["prepare", "--rdkit-properties", ""]).rdkit_properties == ()


def test_the_accepted_rdkit_properties_are_those_prepare_computes():
    from ml_patterns.molecules import prepare
    from ml_patterns.molecules.config import RDKIT_PROPERTIES

    assert set(RDKIT_PROPERTIES) == set(prepare._rdkit_descriptors())


def test_a_bug_keeps_its_traceback(monkeypatch):
    # Only the user-error types become one line: a KeyError from a bug propagates.
    def buggy(args):
        raise KeyError("a bug")

    monkeypatch.setitem(cli.SUBCOMMANDS, "info", (cli.SUBCOMMANDS["info"][0], buggy, "info"))
    with pytest.raises(KeyError, match="a bug"):
        main(["info"])


def test_ctrl_c_exits_130_in_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.SUBCOMMANDS, "info", (cli.SUBCOMMANDS["info"][0], interrupted, "info"))
    assert main(["info"]) == 130
    assert capsys.readouterr().err.strip() == "ml-patterns info: interrupted"


@pytest.mark.parametrize("command", sorted(cli.SUBCOMMANDS))
def test_every_option_has_help_with_its_default(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    help_text = " ".join(sub.format_help().split())
    for action in sub._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
        if action.default is not None and action.default is not False:
            # the formatter appends "(default: X)", or the text already says what the default is
            assert "default" in action.help or f"(default: {action.default})" in help_text, action.dest
        if action.choices:
            assert all(str(choice) in help_text for choice in action.choices), action.dest


def modules_loaded(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh Python process has loaded once it has run ``code``."""
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_console_script_does_not_load_a_framework_or_matplotlib_for_core_commands():
    code = "import sys; from ml_patterns_app.cli import main; main(['--version'])"
    start = (
        "import ml_patterns_app.cli, ml_patterns.data, ml_patterns.molecules.prepare; "
        "ml_patterns_app.cli.build_parser()"
    )
    assert modules_loaded(start, ("torch", "jax", "matplotlib")) == []
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_convert_writes_a_portable_checkpoint_of_a_state_dict(tmp_path, capsys):
    import numpy as np
    import torch

    from ml_patterns.checkpoint import load_checkpoint

    layer = torch.nn.Linear(3, 2)
    torch.save(layer.state_dict(), tmp_path / "in.pt")
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(tmp_path / "in.pt"), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    arrays, metadata = load_checkpoint(out)
    assert metadata["backend"] == "torch" and metadata["config"] is None
    for name, tensor in layer.state_dict().items():
        np.testing.assert_array_equal(arrays[name], tensor.numpy())
    assert main(["convert", str(tmp_path / "in.pt"), str(out)]) == 2
    assert "already exists (pass --overwrite to replace it)" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "in.pt"), str(out), "--overwrite"]) == 0


def test_convert_refuses_what_is_not_a_state_dict_in_one_line(tmp_path, capsys):
    import torch

    torch.save({"step": 3}, tmp_path / "not_tensors.pt")
    assert main(["convert", str(tmp_path / "not_tensors.pt"), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ml-patterns convert: error: ") and "not a state_dict of tensors" in err
    assert "Traceback" not in err and not (tmp_path / "out.safetensors").exists()
