"""compare's test metrics (``workload.molecule_test_metrics``) on a prepared set with a missing-label regression
target and a binary one: each metric over the target's labelled test rows, with the baseline computed
from the training split's statistics."""

import numpy as np
import pytest

import torch_impl.data
import torch_impl.molecules.models
import torch_impl.runtime
from ml_patterns.data import LazyDataset
from ml_patterns.molecules.config import ModelConfig, PrepareConfig
from ml_patterns.molecules.prepare import prepare_dataset
from ml_patterns_app.compare.workload import molecule_test_metrics as compare_test_metrics
from parity_tests.sparse_data import write_sparse_source


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    write_sparse_source(root / "sparse.csv", 420)
    config = PrepareConfig(rdkit_properties=(), val_fraction=0.25, test_fraction=0.25)
    options = dict(
        csv_path=root / "sparse.csv", target_cols=["tpsa", "coarse", "active"], config=config, progress=False
    )
    return root / "ds", prepare_dataset(root / "ds", **options)


def test_metrics_and_baselines_over_the_labelled_test_rows(dataset):
    root, manifest = dataset
    config = ModelConfig.from_manifest(manifest, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=512)
    model = torch_impl.molecules.models.build_model(config)
    loader = torch_impl.data.make_loader(LazyDataset(root, split="test"), 32, shuffle=False)
    device = torch_impl.runtime.select_device("cpu")
    metrics = compare_test_metrics(torch_impl.runtime, model, device, config, loader, manifest)
    assert {"MAE tpsa", "R2 tpsa", "accuracy active", "ROC-AUC active", "masked-token accuracy"} <= set(metrics)
    test = [r["label"] for r in LazyDataset(root, split="test")]
    tpsa = np.array([label["tpsa"] for label in test if label["tpsa"] is not None])
    assert len(tpsa) < len(test)  # the set has holes: the metric is over the labelled rows only
    assert metrics["baseline MAE tpsa"] == pytest.approx(np.mean(np.abs(tpsa - manifest["targets"]["tpsa"]["mean"])))
    active = np.array([label["active"] for label in test if label["active"] is not None])
    majority = int(np.argmax(manifest["targets"]["active"]["class_counts_train"]))
    assert metrics["baseline accuracy active"] == pytest.approx(np.mean(active == majority))
    assert metrics["baseline ROC-AUC active"] == 0.5
    assert 0.0 <= metrics["ROC-AUC active"] <= 1.0
