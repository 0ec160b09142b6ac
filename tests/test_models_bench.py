"""bench/models.py: the analytic FLOP count against torch's own counter, and a quick run."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import torch_impl.models
import torch_impl.molecules.models
import torch_impl.training
from ml_patterns_bench import flops
from ml_patterns_bench import models as bench_models
from ml_patterns_bench.common import BenchContext
from tests.test_models import LENGTH, numpy_batch, tiny


def written_out_attention(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its attention on the written-out path: torch's FlopCounterMode has no formula
    for the fused CPU kernel of ``F.scaled_dot_product_attention`` and counts its matmuls as 0, so
    an independent count needs the same products as explicit matmuls (the values are the same:
    parity_tests/test_attention.py)."""
    for module in model.modules():
        if isinstance(module, torch_impl.molecules.models.Attention):
            module.fused = False
    return model


@pytest.mark.parametrize("architecture", ["multitask", "autoencoder"])
def test_flop_count_matches_torchs_counter(architecture):
    config = tiny(architecture=architecture, dropout=0.0, attention_dropout=0.0)
    model = written_out_attention(torch_impl.molecules.models.build_model(config))
    batch = torch_impl.training.to_device(numpy_batch(config))
    with FlopCounterMode(display=False) as counter:
        model.compute_loss(batch).backward()
    assert flops.forward_backward(config, 4, LENGTH) == counter.get_total_flops()


@pytest.mark.slow
def test_quick_run_rows(default_dataset, monkeypatch):
    monkeypatch.setitem(bench_models.SIZES, "cpu", (bench_models.ModelSize("tiny", 16, 1, 2, 4, 24),))
    ctx = BenchContext(
        data_dir=default_dataset[0],
        quick=True,
        devices=("cpu",),
        threads=1,
        precision="float32",
        contenders=("torch eager", "jax.jit"),
    )
    rows = bench_models.run(ctx)
    assert [(r["workload"].split()[0], r["contender"]) for r in rows] == [
        ("multitask", "torch eager"),
        ("multitask", "jax.jit"),
        ("autoencoder", "torch eager"),
        ("autoencoder", "jax.jit"),
    ]
    for torch_row, jax_row in (rows[:2], rows[2:]):
        # Same weights, same batch: the same loss, to float32 rounding.
        assert jax_row["warmup_losses"][0] == pytest.approx(torch_row["warmup_losses"][0], rel=1e-5)
        assert jax_row["compile_s"] > 0 and torch_row["compile_s"] is None
        assert torch_row["flops_per_call"] == jax_row["flops_per_call"] > 0
        assert torch_row["timing"]["median_s"] > 0 and torch_row["throughput"]["unit"] == "samples/s"
