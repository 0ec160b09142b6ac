"""Weight initialization, torch side: ``model.apply(init_weights)``.

The scheme (the same distributions as ``jax_impl.init``; RNGs differ, so parity is statistical):

=============  =========================  ======================
module         weight                     bias
=============  =========================  ======================
Linear         xavier-uniform             zeros
Embedding      normal(0, 0.02)            (none)
LayerNorm      ones                       zeros
=============  =========================  ======================

xavier-uniform draws from U(-a, a), a = sqrt(6 / (fan_in + fan_out)); it is symmetric in the two
fans, so torch's ``[out, in]`` and JAX's ``[in, out]`` layouts get the same distribution.
"""

from __future__ import annotations

from torch import nn

EMBEDDING_STD = 0.02


def init_weights(module: nn.Module) -> None:
    """Initializes one module in place; use as ``model.apply(init_weights)``.

    An Embedding's ``padding_idx`` row is zeroed again afterwards, keeping torch's contract that the
    padding vector starts at zero.
    """
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=EMBEDDING_STD)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
