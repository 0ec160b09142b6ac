"""The molecule models, JAX side (Flax NNX); mirrors ``torch_impl.molecules.models``, where the
architecture and every cross-framework choice are documented."""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_impl import state
from jax_impl.init import EMBEDDING_INIT, LINEAR_KERNEL_INIT, ONES_INIT, ZEROS_INIT
from jax_impl.losses import masked_binary_cross_entropy_sum, masked_cross_entropy, masked_cross_entropy_sum
from jax_impl.models import BaseModel, EncoderDecoder, MultiTaskModel
from ml_patterns import checkpoint
from ml_patterns.models import head_loss_sums, head_losses
from ml_patterns.molecules.batches import check_length
from ml_patterns.molecules.config import MLM_TASK, ModelConfig


class Attention(nnx.Module):
    """Mirrors torch's ``Attention``; its core is always ``reference_attention``, written out, heads
    first as torch's. ``jax.nn.dot_product_attention`` fuses nothing on a CPU (its "xla"
    implementation is the same einsums, masking and softmax under a vmap over query groups) and has
    no dropout; under XLA:CPU the compare model's train step was slower with it, and faster with the
    heads-first layout than with einsums over ``[B, L, H, hd]`` (docs/PERFORMANCE.md)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, *, rngs: nnx.Rngs):
        self.n_heads, self.scale = n_heads, (d_model // n_heads) ** -0.5
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (_linear(d_model, d_model, rngs) for _ in range(4))
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        b, length, d = x.shape
        projections = (self.q_proj, self.k_proj, self.v_proj)
        q, k, v = (proj(x).reshape(b, length, self.n_heads, -1).transpose(0, 2, 1, 3) for proj in projections)
        out = reference_attention(q, k, v, mask, self.scale, self.dropout)  # (b, h, l, hd)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, length, d))


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float, dropout) -> jax.Array:
    """Attention written out, as torch's twin: ``q, k, v`` ``[B, H, L, hd]``, ``mask`` bool ``[B, 1 | L, L]``.

    Scores and softmax in float32 whatever ``q``'s dtype, the probabilities in ``v``'s for the second
    matmul: what torch's fused attention does with bfloat16 inputs under autocast (docs/PRECISION.md)."""
    scores = jnp.matmul(q, k.transpose(0, 1, 3, 2), preferred_element_type=jnp.float32) * scale  # (b, h, l, l)
    scores = jnp.where(mask[:, None], scores, jnp.finfo(scores.dtype).min)
    return jnp.matmul(dropout(jax.nn.softmax(scores, axis=-1).astype(v.dtype)), v)


class FeedForward(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.linear1 = _linear(config.d_model, config.d_ff, rngs)
        self.linear2 = _linear(config.d_ff, config.d_model, rngs)
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.approximate = config.gelu_approximate

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear2(self.dropout(jax.nn.gelu(self.linear1(x), approximate=self.approximate)))


class TransformerLayer(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.norm1 = _layer_norm(config, rngs)
        self.attention = Attention(config.d_model, config.n_heads, config.attention_dropout, rngs=rngs)
        self.norm2 = _layer_norm(config, rngs)
        self.feed_forward = FeedForward(config, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.dropout(self.attention(self.norm1(x), mask))
        return x + self.dropout(self.feed_forward(self.norm2(x)))


class Embeddings(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.tokens = nnx.Embed(config.vocab_size, config.d_model, embedding_init=EMBEDDING_INIT, rngs=rngs)
        self.positions = nnx.Embed(config.max_len, config.d_model, embedding_init=EMBEDDING_INIT, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        check_length(ids.shape[1], self.positions.num_embeddings)
        # Indexing the tables, not calling nnx.Embed: Embed fixes its output dtype when built
        # (``dtype or embedding.dtype``), so parameters cast to bfloat16 later would still embed in
        # float32. Indexing follows the parameters' dtype, as torch's embedding does.
        tokens = jnp.take(self.tokens.embedding[...], ids, axis=0)
        positions = self.positions.embedding[...][: ids.shape[1]]
        return self.dropout(tokens + positions[None])


class SmilesEncoder(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.embeddings = Embeddings(config, rngs=rngs)
        self.layers = nnx.List([TransformerLayer(config, rngs=rngs) for _ in range(config.n_layers)])
        self.final_norm = _layer_norm(config, rngs)

    def __call__(self, batch: dict) -> dict[str, jax.Array]:
        key_mask = batch["attention_mask"]
        x = self.embeddings(batch["input_ids"])
        for layer in self.layers:
            x = layer(x, key_mask[:, None, :])
        hidden = self.final_norm(x)
        weights = key_mask[..., None].astype(hidden.dtype)
        pooled = (hidden * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)  # an all-PAD row pools to 0
        return {"hidden": hidden, "pooled": pooled}


class SmilesDecoder(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.latent = _linear(config.d_model, config.d_model, rngs)
        self.embeddings = Embeddings(config, rngs=rngs)
        self.layers = nnx.List([TransformerLayer(config, rngs=rngs) for _ in range(config.n_decoder_layers)])
        self.final_norm = _layer_norm(config, rngs)
        self.lm_head = _linear(config.d_model, config.vocab_size, rngs)

    def __call__(self, encoded: dict, batch: dict) -> dict[str, jax.Array]:
        ids, key_mask = batch["decoder_input_ids"], batch["decoder_attention_mask"]
        x = self.embeddings(ids) + self.latent(encoded["pooled"])[:, None, :]
        causal = jnp.tril(jnp.ones((ids.shape[1], ids.shape[1]), dtype=jnp.bool_))
        mask = key_mask[:, None, :] & causal[None]
        for layer in self.layers:
            x = layer(x, mask)
        return {"logits": self.lm_head(self.final_norm(x))}

    def loss(self, decoded: dict, batch: dict) -> tuple[jax.Array, dict[str, jax.Array]]:
        loss = masked_cross_entropy(decoded["logits"], batch["decoder_targets"], batch["decoder_mask"])
        return loss, {"reconstruction": loss}

    def loss_sums(self, decoded: dict, batch: dict, weight: jax.Array) -> tuple[jax.Array, jax.Array]:
        mask = _row_weighted(batch["decoder_mask"], weight)
        return masked_cross_entropy_sum(decoded["logits"], batch["decoder_targets"], mask)


class PooledHead(nnx.Module):
    input_key = "input_ids"

    def __init__(self, config: ModelConfig, label: str, outputs: int, loss_weight: float = 1.0, *, rngs: nnx.Rngs):
        self.label, self.loss_weight = label, loss_weight
        self.dense = _linear(config.d_model, config.d_model, rngs)
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.out = _linear(config.d_model, outputs, rngs)
        self.approximate = config.gelu_approximate

    def __call__(self, features: dict) -> jax.Array:
        hidden = self.dropout(jax.nn.gelu(self.dense(features["pooled"]), approximate=self.approximate))
        out = self.out(hidden)
        return out[:, 0] if out.shape[1] == 1 else out

    def loss(self, prediction: jax.Array, batch: dict) -> jax.Array:
        """The mean loss over the rows whose label is present; 0.0 (zero gradients) if none is."""
        total, count = self.loss_sums(prediction, batch, jnp.ones(prediction.shape[:1], jnp.float32))
        return total / jnp.where(count > 0, count, 1.0)

    def _weight(self, batch: dict, weight: jax.Array) -> jax.Array:
        present = batch.get("label_mask")  # {task: bool [B]}: a missing label's row scores nothing
        return weight if present is None else weight * present[self.label].astype(weight.dtype)


class RegressionHead(PooledHead):
    def __init__(self, config: ModelConfig, label: str, loss_weight: float = 1.0, *, rngs: nnx.Rngs):
        super().__init__(config, label, 1, loss_weight, rngs=rngs)

    def loss_sums(self, prediction: jax.Array, batch: dict, weight: jax.Array) -> tuple[jax.Array, ...]:
        weight = self._weight(batch, weight)
        # Summed in the weight's float32 (as torch promotes): a bfloat16 count is inexact past 256 rows.
        squared = ((prediction - batch["labels"][self.label]) ** 2).astype(weight.dtype)
        return (weight * squared).sum(), weight.sum()


class ClassificationHead(PooledHead):
    def __init__(self, config: ModelConfig, label: str, classes: int, loss_weight: float = 1.0, *, rngs: nnx.Rngs):
        super().__init__(config, label, 1 if classes == 2 else classes, loss_weight, rngs=rngs)

    def loss_sums(self, logits: jax.Array, batch: dict, weight: jax.Array) -> tuple[jax.Array, ...]:
        weight, targets = self._weight(batch, weight), batch["labels"][self.label]
        if logits.ndim == 1:
            return masked_binary_cross_entropy_sum(logits, targets, weight)
        return masked_cross_entropy_sum(logits, targets, weight)


class MaskedTokenHead(nnx.Module):
    input_key = "mlm_input_ids"

    def __init__(self, config: ModelConfig, loss_weight: float = 1.0, *, rngs: nnx.Rngs):
        self.loss_weight = loss_weight
        self.dense = _linear(config.d_model, config.d_model, rngs)
        self.norm = _layer_norm(config, rngs)
        self.decoder = _linear(config.d_model, config.vocab_size, rngs)
        self.approximate = config.gelu_approximate

    def __call__(self, features: dict) -> jax.Array:
        return self.decoder(self.norm(jax.nn.gelu(self.dense(features["hidden"]), approximate=self.approximate)))

    def loss(self, logits: jax.Array, batch: dict) -> jax.Array:
        return masked_cross_entropy(logits, batch["mlm_targets"], batch["mlm_mask"])

    def loss_sums(self, logits: jax.Array, batch: dict, weight: jax.Array) -> tuple[jax.Array, jax.Array]:
        return masked_cross_entropy_sum(logits, batch["mlm_targets"], _row_weighted(batch["mlm_mask"], weight))


class SmilesAutoencoder(EncoderDecoder):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(SmilesEncoder(config, rngs=rngs), SmilesDecoder(config, rngs=rngs))
        self.config = config

    def __call__(self, batch: dict) -> dict[str, jax.Array]:
        encoded = self.encode(batch)
        return {**encoded, **self.decode(encoded, batch)}

    def loss_parts(self, batch: dict) -> tuple[jax.Array, dict[str, jax.Array]]:
        return self.decoder.loss(self.decode(self.encode(batch), batch), batch)

    def loss_sums(self, batch: dict, weight: jax.Array) -> dict[str, tuple[jax.Array, jax.Array]]:
        return {"reconstruction": self.decoder.loss_sums(self.decode(self.encode(batch), batch), batch, weight)}


class SmilesMultiTaskModel(MultiTaskModel):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        heads = {task: target_head(config, task, rngs) for task in config.tasks}
        if config.has_mlm_head:
            heads[MLM_TASK] = MaskedTokenHead(config, loss_weight=config.mlm_weight, rngs=rngs)
        super().__init__(SmilesEncoder(config, rngs=rngs), heads)
        self.config = config

    def loss_parts(self, batch: dict) -> tuple[jax.Array, dict[str, jax.Array]]:
        return head_losses(self.backbone, self.heads, batch)

    def loss_sums(self, batch: dict, weight: jax.Array) -> dict[str, tuple[jax.Array, jax.Array]]:
        return head_loss_sums(self.backbone, self.heads, batch, weight)


def target_head(config: ModelConfig, task: str, rngs: nnx.Rngs) -> PooledHead:
    classes = config.classes(task)
    if classes:
        return ClassificationHead(config, task, classes, rngs=rngs)
    return RegressionHead(config, task, rngs=rngs)


def _row_weighted(mask: jax.Array, weight: jax.Array) -> jax.Array:
    # A [B, L] token mask times the [B] row weight of a data-parallel shard (padding rows weigh 0).
    return jnp.where(mask, weight[:, None], 0.0)


def build_model(
    config: ModelConfig, *, weights: Mapping[str, np.ndarray] | None = None, rngs: nnx.Rngs | None = None
) -> BaseModel:
    """The molecule model of ``config.architecture`` (see ``torch_impl.molecules.models.build_model``).

    ``rngs`` default to streams derived from ``config.seed`` (parameters and dropout from distinct
    keys). With ``weights`` (canonical arrays, e.g. ``torch_impl.state.to_numpy`` of a torch model)
    the structure is built abstractly (``nnx.eval_shape``) and filled with them: no random
    initialization is computed only to be overwritten.
    """
    params_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    if weights is None:
        return _build(config, nnx.Rngs(params=params_key, dropout=dropout_key) if rngs is None else rngs)
    # The Rngs inside are placeholders of the abstract trace: parameters come from ``weights``, and
    # the dropout streams, still abstract afterwards, get real keys from reseed.
    model = nnx.eval_shape(lambda: _build(config, nnx.Rngs(params=0, dropout=0)))
    state.from_numpy(model, weights)
    nnx.reseed(model, dropout=dropout_key if rngs is None else rngs.dropout())
    return model


def _build(config: ModelConfig, rngs: nnx.Rngs) -> BaseModel:
    model_class = SmilesAutoencoder if config.architecture == "autoencoder" else SmilesMultiTaskModel
    return model_class(config, rngs=rngs)


def load_model(path: str | os.PathLike) -> BaseModel:
    arrays, metadata = checkpoint.load_checkpoint(path)
    return build_model(checkpoint.config_from_metadata(metadata, path), weights=arrays)


def _linear(d_in: int, d_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, kernel_init=LINEAR_KERNEL_INIT, bias_init=ZEROS_INIT, rngs=rngs)


def _layer_norm(config: ModelConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # use_fast_variance=False: the two-pass variance, as torch computes it (PARITY.md).
    return nnx.LayerNorm(
        config.d_model,
        epsilon=config.layer_norm_eps,
        use_fast_variance=False,
        scale_init=ONES_INIT,
        bias_init=ZEROS_INIT,
        rngs=rngs,
    )
