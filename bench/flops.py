"""The FLOP model: matmul FLOPs counted analytically, for GFLOP/s and the fraction of the matmul peak.

Only matmuls are counted (embeddings, LayerNorm, softmax, GELU, losses and optimizers are not): on
the sizes benchmarked they are nearly all of the arithmetic, and torch's own ``FlopCounterMode``
counts the same thing, which the tests check these formulas against. A backward pass costs two
matmuls per forward matmul (the input's gradient and the weight's), so forward + backward is 3x
the forward wherever every input needs its gradient.
"""

from __future__ import annotations

from ml_patterns.molecules.config import ModelConfig


def matmul(m: int, k: int, n: int) -> int:
    """``[m, k] @ [k, n]``: ``m * n`` dot products of length ``k``, a multiply and an add each."""
    return 2 * m * k * n


def mlp_train_step(batch: int, width: int, depth: int) -> int:
    """``depth`` layers ``Linear(width, width)``: forward, then the weight gradient of every layer and
    the input gradient of every layer but the first (the batch needs none, and neither side computes it)."""
    return matmul(batch, width, width) * (depth + depth + depth - 1)


def transformer_layers(config: ModelConfig, n_layers: int, batch: int, length: int) -> int:
    """Forward of ``n_layers`` Transformer layers on ``[batch, length]`` tokens: the q, k, v and
    output projections, the feed-forward pair, and attention's scores and weighted sum of the values
    (``[length x length]`` per head over head_dim; all heads together: ``d_model``)."""
    tokens, d = batch * length, config.d_model
    projections = 4 * matmul(tokens, d, d) + 2 * matmul(tokens, d, config.d_ff)
    attention = 2 * batch * matmul(length, d, length)
    return n_layers * (projections + attention)


def forward_backward(config: ModelConfig, batch: int, length: int) -> int:
    """Matmul FLOPs of one forward + backward of a molecule model (``torch_impl.molecules.models``):
    the loss and every parameter's gradient. An optimizer step adds no matmul, so this is also a
    train step's count.

    The multi-task encoder runs once per distinct head input (clean tokens for the regression heads,
    masked ones for the masked-token head); the autoencoder's decoder sees ``length - 1`` tokens.
    """
    d, vocab = config.d_model, config.vocab_size
    if config.architecture == "autoencoder":
        forward = transformer_layers(config, config.n_layers, batch, length)
        forward += transformer_layers(config, config.n_decoder_layers, batch, length - 1)
        forward += matmul(batch, d, d) + matmul(batch * (length - 1), d, vocab)  # latent projection, lm_head
    else:
        passes = bool(config.tasks) + config.has_mlm_head
        forward = passes * transformer_layers(config, config.n_layers, batch, length)
        # regression heads on the pooled vector: dense d -> d, out d -> 1
        forward += len(config.tasks) * (matmul(batch, d, d) + matmul(batch, d, 1))
        if config.has_mlm_head:  # dense, then the decoder to the vocabulary
            forward += matmul(batch * length, d, d) + matmul(batch * length, d, vocab)
    return 3 * forward
