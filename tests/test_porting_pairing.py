"""Pairing container by container: layers pair by name, then in order, inside paired containers; a
count that differs is reported at its container while later containers still pair."""

from __future__ import annotations

import re
from pathlib import Path

from flax import nnx
from torch import nn

from ml_patterns_app.porting import compare_forward, compare_gradients, transfer_weights
from ml_patterns_app.porting.parity_report import build_pair
from tests.test_models import numpy_batch, tiny

DOCS = Path(__file__).resolve().parents[1] / "docs" / "PORTING.md"


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(8, 8) for _ in range(3))


class Output(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense, self.norm = nn.Linear(8, 8), nn.LayerNorm(8)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.self, self.output = SelfAttention(), Output()


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention, self.ffn = Attention(), nn.Linear(8, 8)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.ModuleList(Layer() for _ in range(2))


class FusedSelfAttention(nnx.Module):
    def __init__(self, rngs):
        self.qkv = nnx.Linear(8, 24, rngs=rngs)


class OutputPort(nnx.Module):
    def __init__(self, rngs):
        self.dense, self.norm = nnx.Linear(8, 8, rngs=rngs), nnx.LayerNorm(8, epsilon=1e-5, rngs=rngs)


class AttentionPort(nnx.Module):
    def __init__(self, rngs):
        self.self, self.output = FusedSelfAttention(rngs), OutputPort(rngs)


class LayerPort(nnx.Module):
    def __init__(self, rngs):
        self.attention, self.ffn = AttentionPort(rngs), nnx.Linear(8, 8, rngs=rngs)


class EncoderPort(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.layer = nnx.List([LayerPort(rngs) for _ in range(2)])


def test_a_fused_qkv_is_reported_at_its_container_and_later_layers_still_pair():
    weight_map = transfer_weights(Encoder(), EncoderPort(), dry_run=True)
    counts = [p for p in weight_map.problems if " Linear in torch" in p]
    assert counts == [
        f"layer.{i}.attention.self: 3 Linear in torch, 1 in nnx; torch Linear without a counterpart: "
        f"layer.{i}.attention.self.query, layer.{i}.attention.self.key, layer.{i}.attention.self.value; "
        f"nnx Linear without a counterpart: layer.{i}.attention.self.qkv"
        for i in range(2)
    ]
    paired = {(p.torch.path, p.nnx.path) for p in weight_map.pairs}
    for i in range(2):  # everything after the fused projection still pairs, with its own counterpart
        for path in ("attention.output.dense", "attention.output.norm", "ffn"):
            assert (f"layer.{i}.{path}", f"layer.{i}.{path}") in paired
    assert all(row.ok for row in weight_map.rows)


class Wrapped(nnx.Module):
    """The torch ``Layer``'s layers one level deeper on the NNX side, under other names."""

    def __init__(self):
        rngs = nnx.Rngs(0)
        self.inner = nnx.Dict(
            {
                "q": nnx.Linear(8, 8, rngs=rngs),
                "k": nnx.Linear(8, 8, rngs=rngs),
                "v": nnx.Linear(8, 8, rngs=rngs),
                "proj": nnx.Linear(8, 8, rngs=rngs),
                "norm": nnx.LayerNorm(8, rngs=rngs),
            }
        )
        self.ffn = nnx.Linear(8, 8, rngs=rngs)


def test_containers_nested_differently_are_opened_until_the_layers_pair():
    weight_map = transfer_weights(Layer(), Wrapped(), dry_run=True)
    assert not weight_map.problems, weight_map.format_table()
    assert [(p.torch.path, p.nnx.path) for p in weight_map.pairs] == [
        ("attention.self.query", "inner.q"),
        ("attention.self.key", "inner.k"),
        ("attention.self.value", "inner.v"),
        ("attention.output.dense", "inner.proj"),
        ("attention.output.norm", "inner.norm"),
        ("ffn", "ffn"),
    ]


def test_our_molecule_model_pairs_layer_for_layer_with_the_default_pairing():
    torch_model, jax_model = build_pair(tiny())
    weight_map = transfer_weights(torch_model, jax_model, dry_run=True)
    assert not weight_map.problems
    assert all(p.torch.path == p.nnx.path for p in weight_map.pairs)  # norm2 with norm2, not norm1
    batch = numpy_batch(tiny())
    report = compare_gradients(
        torch_model, jax_model, batch, lambda m, b: m.compute_loss(b), lambda m, b: m.compute_loss(b)
    )
    assert report.passed, report.format_table()
    assert len(report.rows) == 1 + sum(len(row.nnx_names) for row in weight_map.rows)
    forward = compare_forward(torch_model, jax_model, (batch,))
    assert forward.passed, forward.format_table()
    # JAX indexes the embedding tables without calling nnx.Embed: compared through their container
    assert "called on one side only, compared through their containers: backbone.embeddings.tokens" in forward.scope


def _docs_example() -> str:
    section = DOCS.read_text().split("## Third-party models", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_docs_linen_example_runs_and_pairs_inside_the_linen_blocks(capsys):
    namespace: dict = {}
    exec(compile(_docs_example(), str(DOCS), "exec"), namespace)
    report = namespace["report"]
    assert report.passed
    compared = {(row.torch_name, row.nnx_name) for row in report.rows}
    assert ("blocks.1.fc2", "Block_1.Dense_1") in compared and ("blocks.1", "Block_1") in compared
    assert "blocks.0.fc1.weight" in capsys.readouterr().out


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Sequential(nn.Linear(4, 4)), nn.Sequential(nn.Linear(4, 4))


class TwoPort(nnx.Module):  # the same containers, defined in the other order under other names
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.y, self.x = nnx.List([nnx.Linear(4, 4, rngs=rngs)]), nnx.List([nnx.Linear(4, 4, rngs=rngs)])


def test_pairs_may_name_containers():
    def paired(**kwargs):
        return [(p.torch.path, p.nnx.path) for p in transfer_weights(Two(), TwoPort(), dry_run=True, **kwargs).pairs]

    assert paired() == [("a.0", "y.0"), ("b.0", "x.0")]  # in order: what the names cannot tell
    assert paired(pairs={"a": "x", "b": "y"}) == [("a.0", "x.0"), ("b.0", "y.0")]
    weight_map = transfer_weights(Two(), TwoPort(), dry_run=True, pairs={"a": "x", "nope": "y"})
    assert "pairs: torch 'nope' is not a layer, loose parameter or container" in str(weight_map)
