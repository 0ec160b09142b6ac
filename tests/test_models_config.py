"""ModelConfig: defaults, validation, construction from a dataset's manifest, JSON round trip."""

import json

import pytest

from ml_patterns.molecules.config import ModelConfig


def test_from_manifest_takes_vocabulary_targets_and_statistics(default_dataset):
    _, manifest = default_dataset
    config = ModelConfig.from_manifest(manifest, d_model=64, n_heads=4)
    assert config.vocab_size == manifest["vocab_size"]
    assert config.tasks == ("TPSA", "MolLogP", "MolWt", "NumRings", "NumHDonors")
    assert config.target_mean[0] == manifest["targets"]["TPSA"]["mean"]
    assert config.target_std[2] == manifest["targets"]["MolWt"]["std"]
    assert config.d_model == 64 and config.has_mlm_head
    assert config.max_len >= manifest["sequence_length"]["max"]  # the default table covers the default data


def test_defaults_that_frameworks_disagree_on_are_explicit():
    config = ModelConfig()
    assert config.layer_norm_eps == 1e-5 and config.gelu_approximate is False


def test_json_round_trip():
    config = ModelConfig(tasks=("a", "b"), target_mean=(1.0, 2.0), target_std=(3.0, 4.0), architecture="autoencoder")
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['heads'\]"):
        ModelConfig.from_dict({"heads": 3})


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"architecture": "gpt"}, "architecture must be one of"),
        ({"vocab_size": 4}, "vocab_size must exceed"),
        ({"d_model": 30, "n_heads": 4}, r"d_model \(30\) must be a multiple of n_heads \(4\)"),
        ({"dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps must be positive"),
        ({"mlm_mask_prob": 0.0}, "mlm_mask_prob"),
        ({"tasks": ("a", "a"), "target_mean": (0, 0), "target_std": (1, 1)}, "task names repeat"),
        ({"tasks": ("a.b",), "target_mean": (0,), "target_std": (1,)}, r"task name 'a\.b' is not allowed"),
        ({"tasks": ("mlm",), "target_mean": (0,), "target_std": (1,)}, "task name 'mlm' is not allowed"),
        ({"tasks": ("a",), "target_mean": (0,), "target_std": ()}, "need one value per task"),
        (
            {"tasks": ("a",), "target_mean": (0,), "target_std": (0.0,)},
            r"target_std must be positive; it is not for \['a'\]",
        ),
        ({"mlm_weight": 0.0}, "needs at least one task or mlm_weight > 0"),
    ],
)
def test_validation_names_the_problem(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ValueError, match="^invalid ModelConfig: ") as caught:
        ModelConfig(d_model=0, dropout=-0.1)
    assert "d_model must be positive" in str(caught.value) and "dropout must lie" in str(caught.value)
