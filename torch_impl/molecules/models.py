"""The molecule models, torch side, built on the generic compositions of ``torch_impl.models``.

Molecule models (``build_model(config)``, ``ml_patterns.molecules.config.ModelConfig``)
    Batches are dicts of tensors built by ``ml_patterns.molecules.batches`` (the keys each model reads
    are listed there) and converted with ``torch_impl.training.to_device``.
    ``SmilesEncoder``: token + learned position embeddings, ``n_layers`` pre-LayerNorm Transformer
    layers, a final LayerNorm; returns ``{"hidden": [B, L, D], "pooled": [B, D]}``, pooled being the
    mean over real tokens (``attention_mask``).
    "multitask": ``SmilesMultiTaskModel``, a ``MultiTaskModel(SmilesEncoder, heads)`` with one head per
    target (``RegressionHead``: ``[B]``, standardized units, MSE loss; ``ClassificationHead``: a
    binary target's logit ``[B]`` and binary cross-entropy, a C-class target's logits ``[B, C]`` and
    cross-entropy; both masked for missing labels) and a ``MaskedTokenHead``
    (``[B, L, vocab]`` logits, masked cross-entropy on ``mlm_input_ids``). ``forward(batch, task=None)``
    is the generic one; each head knows its loss (``head.loss(output, batch)``), weight
    (``head.loss_weight``) and input (``head.input_key``: the batch key holding the token ids its loss
    is trained on); ``loss_parts`` returns their weighted sum and ``{task: loss}``.
    "autoencoder": ``SmilesAutoencoder``, an ``EncoderDecoder(SmilesEncoder, SmilesDecoder)``:
    ``encode(batch) -> {"hidden", "pooled"}``, ``decode(encoded, batch) -> {"logits"}`` (the batch
    brings the teacher-forcing inputs), ``forward(batch)`` both dicts merged. The decoder adds the
    projected pooled vector (the latent: the only path from encoder to decoder, a real bottleneck) to
    its token and position embeddings and runs causal pre-LayerNorm layers, teacher forced;
    ``{"logits": [B, L - 1, vocab]}``, loss the masked cross-entropy of the reconstruction.
    Data-parallel training (``ml_patterns.distributed``): ``loss_sums(batch, weight)`` gives each
    loss part as ``(sum, count)`` over the rows of weight 1 (a ``[B]`` float32 row weight, 0 on a
    shard's padding rows), a head's ``loss_weight`` folded into its sum: ``{task: ...}`` through each
    head's ``loss_sums(output, batch, weight)``, ``{"reconstruction": ...}`` for the autoencoder.

Choices made identically on both sides (docs/PARITY.md):
    - Attention has separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linear layers rather than
      ``nn.MultiheadAttention``/``nnx.MultiHeadAttention``: those pack or reshape the projections
      differently (``in_proj_weight`` ``[3D, D]`` vs ``DenseGeneral`` ``[D, H, hd]``), so weight
      transfer would be more than a transpose. Its core is ``F.scaled_dot_product_attention`` on
      torch and the written-out form on JAX (what XLA:CPU runs fastest: docs/PERFORMANCE.md);
      ``reference_attention`` is the written-out torch form the parity tests compare both against.
    - Scores are ``(q @ k^T) * head_dim ** -0.5``; masked keys get ``finfo(dtype).min`` (a ``where``,
      or an additive bias in the fused kernel), not ``-inf``: the softmax then gives them exactly 0
      (whenever a row has one real key, always true here as BOS is real) and a fully masked row
      stays finite (uniform) instead of NaN.
    - LayerNorm epsilon ``config.layer_norm_eps`` (Flax: ``use_fast_variance=False``, the two-pass
      variance torch computes); GELU exact (erf) unless ``config.gelu_approximate``.
    - Initialization: ``init_weights`` (xavier-uniform Linear, N(0, 0.02) embeddings, LayerNorm 1/0),
      seeded by ``config.seed``. Parity never relies on seeds: weights are copied (``state``).
    - No ``padding_idx``: PAD positions reach no output (their keys are masked, pooling and losses
      skip them), so the PAD row's gradient is exactly zero on both sides anyway, and torch's
      ``padding_idx`` would add a behaviour Flax's ``Embed`` lacks.
    - No weight tying between embeddings and output layers: tied parameters would appear under two
      names in torch's ``state_dict`` and as one in Flax's state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml_patterns import checkpoint
from ml_patterns.models import head_loss_sums, head_losses
from ml_patterns.molecules.batches import check_length
from ml_patterns.molecules.config import MLM_TASK, ModelConfig
from torch_impl import state
from torch_impl.init import init_weights
from torch_impl.losses import masked_binary_cross_entropy_sum, masked_cross_entropy, masked_cross_entropy_sum
from torch_impl.models import BaseModel, EncoderDecoder, MultiTaskModel


class Attention(nn.Module):
    """Multi-head self-attention: ``x [B, L, D]``, ``mask`` bool ``[B, 1 | L, L]`` (True: may attend).

    ``fused`` (the default) runs ``F.scaled_dot_product_attention``: one kernel, forward and
    backward, about twice as fast as the written-out form on a CPU at L >= 64 (docs/PERFORMANCE.md).
    ``fused=False`` runs ``reference_attention``, which the parity tests hold it to. The mask is
    passed as an additive ``finfo.min`` bias, not as a boolean: SDPA turns a boolean mask into
    ``-inf`` and returns 0 for a fully masked row, where the reference (and JAX) give a uniform average.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float, *, fused: bool = True):
        super().__init__()
        self.n_heads, self.scale, self.fused = n_heads, (d_model // n_heads) ** -0.5, fused
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        projections = (self.q_proj, self.k_proj, self.v_proj)
        q, k, v = (proj(x).view(b, length, self.n_heads, -1).transpose(1, 2) for proj in projections)  # (b, h, l, hd)
        if self.fused:
            bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, torch.finfo(q.dtype).min)
            p = self.dropout.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None], dropout_p=p, scale=self.scale)
        else:
            out = reference_attention(q, k, v, mask, self.scale, self.dropout)
        return self.out_proj(out.transpose(1, 2).reshape(b, length, d))  # (b, l, h, hd) -> (b, l, d)


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, dropout: nn.Module
) -> torch.Tensor:
    """Attention written out: ``q, k, v`` ``[B, H, L, hd]``, ``mask`` bool ``[B, 1 | L, L]`` -> ``[B, H, L, hd]``."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (b, h, l, l)
    scores = scores.masked_fill(~mask[:, None], torch.finfo(scores.dtype).min)
    return torch.matmul(dropout(torch.softmax(scores, dim=-1)), v)


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.linear1 = nn.Linear(config.d_model, config.d_ff)
        self.linear2 = nn.Linear(config.d_ff, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.approximate = _gelu_form(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.gelu(self.linear1(x), approximate=self.approximate)))


class TransformerLayer(nn.Module):
    """Pre-LayerNorm: ``x + dropout(attention(norm1(x)))``, then ``x + dropout(feed_forward(norm2(x)))``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attention = Attention(config.d_model, config.n_heads, config.attention_dropout)
        self.norm2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm1(x), mask))
        return x + self.dropout(self.feed_forward(self.norm2(x)))


class Embeddings(nn.Module):
    """Token + learned position embeddings, then dropout: ``ids [B, L]`` int -> ``[B, L, D]``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.positions = nn.Embedding(config.max_len, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        check_length(ids.shape[1], self.positions.num_embeddings)
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.dropout(self.tokens(ids) + self.positions(positions))


class SmilesEncoder(nn.Module):
    """``batch["input_ids"]`` int ``[B, L]``, ``batch["attention_mask"]`` bool ``[B, L]`` ->
    ``{"hidden": [B, L, D], "pooled": [B, D]}`` (pooled: mean of ``hidden`` over real tokens)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        key_mask = batch["attention_mask"]
        x = self.embeddings(batch["input_ids"])
        for layer in self.layers:
            x = layer(x, key_mask[:, None, :])
        hidden = self.final_norm(x)
        weights = key_mask[..., None].to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # an all-PAD row pools to 0
        return {"hidden": hidden, "pooled": pooled}


class SmilesDecoder(nn.Module):
    """Teacher-forced causal decoder conditioned on ``encoded["pooled"]`` ``[B, D]`` (the latent).

    Reads ``decoder_input_ids`` / ``decoder_attention_mask`` ``[B, T]``; returns
    ``{"logits": [B, T, vocab]}``. ``loss`` scores them against ``decoder_targets`` where ``decoder_mask``.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.latent = nn.Linear(config.d_model, config.d_model)
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.n_decoder_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)

    def forward(self, encoded: dict, batch: dict) -> dict[str, torch.Tensor]:
        ids, key_mask = batch["decoder_input_ids"], batch["decoder_attention_mask"]
        x = self.embeddings(ids) + self.latent(encoded["pooled"])[:, None, :]
        causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool, device=ids.device).tril()
        mask = key_mask[:, None, :] & causal[None]
        for layer in self.layers:
            x = layer(x, mask)
        return {"logits": self.lm_head(self.final_norm(x))}

    def loss(self, decoded: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = masked_cross_entropy(decoded["logits"], batch["decoder_targets"], batch["decoder_mask"])
        return loss, {"reconstruction": loss}

    def loss_sums(self, decoded: dict, batch: dict, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = _row_weighted(batch["decoder_mask"], weight)
        return masked_cross_entropy_sum(decoded["logits"], batch["decoder_targets"], mask)


class PooledHead(nn.Module):
    """A target's head: ``features["pooled"]`` ``[B, D]`` -> dense, GELU, dropout -> ``outputs`` values
    a row; the subclasses' ``loss_sums`` score them against ``batch["labels"][label]`` on the rows
    whose ``batch["label_mask"][label]`` is True (a missing label scores nothing)."""

    input_key = "input_ids"

    def __init__(self, config: ModelConfig, label: str, outputs: int, loss_weight: float = 1.0):
        super().__init__()
        self.label, self.loss_weight = label, loss_weight
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.d_model, outputs)
        self.approximate = _gelu_form(config)

    def forward(self, features: dict) -> torch.Tensor:
        hidden = self.dropout(F.gelu(self.dense(features["pooled"]), approximate=self.approximate))
        out = self.out(hidden)
        return out[:, 0] if out.shape[1] == 1 else out

    def loss(self, prediction: torch.Tensor, batch: dict) -> torch.Tensor:
        """The mean loss over the rows whose label is present; 0.0 (zero gradients) if none is."""
        total, count = self.loss_sums(prediction, batch, torch.ones(prediction.shape[:1], device=prediction.device))
        return total / torch.where(count > 0, count, torch.ones_like(count))

    def _weight(self, batch: dict, weight: torch.Tensor) -> torch.Tensor:
        present = batch.get("label_mask")  # {task: bool [B]}: a missing label's row scores nothing
        return weight if present is None else weight * present[self.label].to(weight.dtype)


class RegressionHead(PooledHead):
    """``[B]`` in standardized units; squared error against ``batch["labels"][label]`` (float32 ``[B]``)."""

    def __init__(self, config: ModelConfig, label: str, loss_weight: float = 1.0):
        super().__init__(config, label, 1, loss_weight)

    def loss_sums(self, prediction: torch.Tensor, batch: dict, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
        weight = self._weight(batch, weight)
        return (weight * (prediction - batch["labels"][self.label]) ** 2).sum(), weight.sum()


class ClassificationHead(PooledHead):
    """``classes`` 2: one logit ``[B]``, binary cross-entropy against 0./1. labels (float32 ``[B]``);
    ``classes`` C > 2: logits ``[B, C]``, cross-entropy against class ids (int ``[B]``)."""

    def __init__(self, config: ModelConfig, label: str, classes: int, loss_weight: float = 1.0):
        super().__init__(config, label, 1 if classes == 2 else classes, loss_weight)

    def loss_sums(self, logits: torch.Tensor, batch: dict, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
        weight, targets = self._weight(batch, weight), batch["labels"][self.label]
        if logits.ndim == 1:
            return masked_binary_cross_entropy_sum(logits, targets, weight)
        return masked_cross_entropy_sum(logits, targets, weight)


class MaskedTokenHead(nn.Module):
    """BERT's MLM head: ``features["hidden"]`` ``[B, L, D]`` -> logits ``[B, L, vocab]``
    (dense, GELU, LayerNorm, decoder); masked cross-entropy against ``mlm_targets`` where ``mlm_mask``."""

    input_key = "mlm_input_ids"

    def __init__(self, config: ModelConfig, loss_weight: float = 1.0):
        super().__init__()
        self.loss_weight = loss_weight
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.d_model, config.vocab_size)
        self.approximate = _gelu_form(config)

    def forward(self, features: dict) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(features["hidden"]), approximate=self.approximate)))

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return masked_cross_entropy(logits, batch["mlm_targets"], batch["mlm_mask"])

    def loss_sums(self, logits: torch.Tensor, batch: dict, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return masked_cross_entropy_sum(logits, batch["mlm_targets"], _row_weighted(batch["mlm_mask"], weight))


class SmilesAutoencoder(EncoderDecoder):
    """``EncoderDecoder(SmilesEncoder, SmilesDecoder)`` on molecule batches (module docstring)."""

    def __init__(self, config: ModelConfig):
        super().__init__(SmilesEncoder(config), SmilesDecoder(config))
        self.config = config

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        encoded = self.encode(batch)
        return {**encoded, **self.decode(encoded, batch)}

    def loss_parts(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.decoder.loss(self.decode(self.encode(batch), batch), batch)

    def loss_sums(self, batch: dict, weight: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {"reconstruction": self.decoder.loss_sums(self.decode(self.encode(batch), batch), batch, weight)}


class SmilesMultiTaskModel(MultiTaskModel):
    """``MultiTaskModel(SmilesEncoder, heads)``: a regression head per target, and the masked-token
    head unless ``config.mlm_weight`` is 0 (module docstring)."""

    def __init__(self, config: ModelConfig):
        heads = {task: target_head(config, task) for task in config.tasks}
        if config.has_mlm_head:
            heads[MLM_TASK] = MaskedTokenHead(config, loss_weight=config.mlm_weight)
        super().__init__(SmilesEncoder(config), heads)
        self.config = config

    def loss_parts(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return head_losses(self.backbone, self.heads, batch)

    def loss_sums(self, batch: dict, weight: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return head_loss_sums(self.backbone, self.heads, batch, weight)


def target_head(config: ModelConfig, task: str) -> PooledHead:
    """The head of ``task``: regression, or classification into ``config.classes(task)`` classes."""
    classes = config.classes(task)
    return ClassificationHead(config, task, classes) if classes else RegressionHead(config, task)


def _row_weighted(mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # A [B, L] token mask times the [B] row weight of a data-parallel shard (padding rows weigh 0).
    return torch.where(mask, weight[:, None], 0.0)


def build_model(config: ModelConfig, *, weights: Mapping[str, np.ndarray] | None = None) -> BaseModel:
    """The molecule model of ``config.architecture``, initialized by ``init_weights`` from
    ``config.seed`` (torch's global RNG is left as it was), then given ``weights`` (canonical
    arrays, e.g. ``jax_impl.state.to_numpy`` of a JAX model) if passed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = SmilesAutoencoder(config) if config.architecture == "autoencoder" else SmilesMultiTaskModel(config)
        model.apply(init_weights)
    if weights is not None:
        state.from_numpy(model, weights)
    return model


def load_model(path: str | os.PathLike) -> BaseModel:
    """Rebuilds the model a checkpoint (from either backend) was saved from, with its weights."""
    arrays, metadata = checkpoint.load_checkpoint(path)
    return build_model(checkpoint.config_from_metadata(metadata, path), weights=arrays)


def _gelu_form(config: ModelConfig) -> str:
    return "tanh" if config.gelu_approximate else "none"
