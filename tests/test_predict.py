"""``ml-patterns predict`` on a folder laid out as compare's report (each backend's trained weights,
the dataset's vocabulary): every target in its own units, a class with its probabilities, the same
predictions from either backend within the forward tolerance, and rows it cannot predict named."""

import csv
import shutil

import numpy as np
import pytest

import jax_impl.molecules.models
import torch_impl.molecules.models
from ml_patterns.molecules.config import ModelConfig, PrepareConfig
from ml_patterns.molecules.prepare import prepare_dataset
from ml_patterns.parity import FORWARD
from ml_patterns_app.cli import main
from ml_patterns_app.compare.written import VOCABULARY, WEIGHTS
from parity_tests.sparse_data import write_sparse_source

MOLECULES = ["CCO", "c1ccccc1O", "not a smiles", "CC(=O)Nc1ccc(O)cc1", "C" * 80]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report folder: trained-looking weights (torch's, and JAX's from other initial weights) and the vocabulary."""
    root = tmp_path_factory.mktemp("predict")
    write_sparse_source(root / "sparse.csv", 120)
    config = PrepareConfig(rdkit_properties=(), val_fraction=0.0, test_fraction=0.0)
    targets = ["tpsa", "coarse", "active"]
    manifest = prepare_dataset(
        root / "ds", csv_path=root / "sparse.csv", target_cols=targets, config=config, progress=False
    )
    model_config = ModelConfig.from_manifest(manifest, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=40)
    folder = root / "report"
    folder.mkdir()
    torch_impl.molecules.models.build_model(model_config).save(folder / WEIGHTS["torch"])
    other = ModelConfig(**{**model_config.__dict__, "seed": 5})
    jax_impl.molecules.models.build_model(other).save(folder / WEIGHTS["jax"])
    shutil.copy(root / "ds" / VOCABULARY, folder / VOCABULARY)
    (root / "new.csv").write_text("name,SMILES\n" + "".join(f"m{i},{s}\n" for i, s in enumerate(MOLECULES)))
    return folder, root / "new.csv", model_config


def predict(tmp_path, folder, source, *options):
    out = tmp_path / f"predictions-{len(list(tmp_path.iterdir()))}.csv"
    assert main(["predict", "--model", str(folder), "--csv", str(source), "--out", str(out), *options]) == 0
    with open(out, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_target_in_its_units_and_failed_rows_named(tmp_path, report, capsys):
    folder, source, config = report
    rows = predict(tmp_path, folder, source, "--device", "cpu")
    assert [row["name"] for row in rows] == [f"m{i}" for i in range(len(MOLECULES))]
    assert list(rows[0])[:3] == ["line", "name", "SMILES"]
    assert {"predicted tpsa", "predicted coarse", "predicted active", "P(active=0)", "P(active=1)"} <= set(rows[0])
    assert rows[2]["error"] == "RDKit cannot parse this SMILES" and rows[2]["predicted tpsa"] == ""
    for row in (rows[0], rows[1], rows[3], rows[4]):
        assert row["error"] == ""
        assert row["predicted active"] in ("0", "1")
        assert float(row["P(active=0)"]) + float(row["P(active=1)"]) == pytest.approx(1.0)
        # An untrained head outputs about 0 in standardized units: near the training mean in TPSA's.
        tpsa = config.target_mean[config.tasks.index("tpsa")], config.target_std[config.tasks.index("tpsa")]
        assert abs(float(row["predicted tpsa"]) - tpsa[0]) < 5 * tpsa[1]
    notes = capsys.readouterr().err
    assert "predicted 4 of 5 molecules" in notes and "1 without a prediction" in notes
    assert "1 cut to the model's 40 tokens" in notes


def test_the_same_weights_predict_alike_on_both_backends(tmp_path, report):
    folder, source, config = report
    by_backend = {
        backend: predict(tmp_path, folder, source, "--backend", backend, "--weights", "torch", "--device", "cpu")
        for backend in ("torch", "jax")
    }
    std = dict(zip(config.tasks, config.target_std))
    for torch_row, jax_row in zip(by_backend["torch"], by_backend["jax"]):
        assert torch_row["predicted active"] == jax_row["predicted active"]
        for column in torch_row:
            if torch_row[column] and column.startswith(("predicted tpsa", "predicted coarse", "P(")):
                task = column.removeprefix("predicted ").split("=")[0].removeprefix("P(")
                scale = std.get(task, 1.0)  # a regression output is destandardized: its error scales by std
                assert float(jax_row[column]) == pytest.approx(float(torch_row[column]), abs=FORWARD.atol * scale)


def test_each_backends_own_weights_by_default(tmp_path, report):
    folder, source, _ = report
    torch_rows = predict(tmp_path, folder, source, "--backend", "torch", "--device", "cpu")
    jax_rows = predict(tmp_path, folder, source, "--backend", "jax", "--device", "cpu")
    values = [
        (float(t["predicted tpsa"]), float(j["predicted tpsa"]))
        for t, j in zip(torch_rows, jax_rows)
        if t["predicted tpsa"]
    ]
    assert not np.allclose(*zip(*values))  # jax.safetensors holds other weights


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--weights", "jax"], "--weights picks a checkpoint in a report folder"),
        (["--smiles-col", "smi"], "--smiles-col 'smi' is not in the header"),
    ],
)
def test_mistakes_are_one_line(tmp_path, report, capsys, options, message):
    folder, source, _ = report
    model = folder / WEIGHTS["torch"] if options[0] == "--weights" else folder
    assert main(["predict", "--model", str(model), "--csv", str(source), *options]) == 2
    assert message in capsys.readouterr().err


def test_an_existing_out_is_kept_without_overwrite(tmp_path, report, capsys):
    folder, source, _ = report
    out = tmp_path / "p.csv"
    out.write_text("mine\n")
    assert main(["predict", "--model", str(folder), "--csv", str(source), "--out", str(out)]) == 2
    assert out.read_text() == "mine\n" and "--overwrite" in capsys.readouterr().err


def test_the_folder_compare_writes_is_one_predict_reads(tmp_path, default_dataset):
    from ml_patterns.outputs import MARKER
    from ml_patterns_app.compare.written import FILES, write_report
    from tests.test_compare import fake_report

    root, manifest = default_dataset
    config = ModelConfig.from_manifest(manifest, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=64)
    checkpoint = tmp_path / "trained.safetensors"
    torch_impl.molecules.models.build_model(config).save(checkpoint)
    trained = {backend: checkpoint.read_bytes() for backend in WEIGHTS}
    folder = tmp_path / "report"
    write_report({**fake_report(default_dataset), "wall_time_s": 1.0}, folder, root, trained)
    assert sorted(p.name for p in folder.iterdir()) == sorted((*FILES, MARKER))
    source = tmp_path / "mine.smi"
    source.write_text("CCO ethanol\nc1ccccc1O phenol\n")
    rows = predict(tmp_path, folder, source, "--backend", "jax", "--device", "cpu")
    assert [row["id"] for row in rows] == ["ethanol", "phenol"]
    assert all(row["predicted TPSA"] and not row["error"] for row in rows)


def test_the_names_predict_reads_are_the_ones_compare_writes():
    from ml_patterns_app.cli import predict_command

    assert predict_command.VOCABULARY == VOCABULARY
    assert {backend: f"{backend}.safetensors" for backend in predict_command.BACKENDS} == WEIGHTS
