"""Weight initialization, JAX side. The scheme and its rationale: ``torch_impl.init``.

Flax NNX initializes parameters at construction, so the initializers below are passed to the layers
(``nnx.Linear(..., kernel_init=LINEAR_KERNEL_INIT, bias_init=ZEROS_INIT)``); ``init_weights``
re-initializes an existing module in place, mirroring torch's ``model.apply(init_weights)``.
"""

from __future__ import annotations

from flax import nnx

EMBEDDING_STD = 0.02
LINEAR_KERNEL_INIT = nnx.initializers.xavier_uniform()
EMBEDDING_INIT = nnx.initializers.normal(stddev=EMBEDDING_STD)
ZEROS_INIT = nnx.initializers.zeros_init()
ONES_INIT = nnx.initializers.ones_init()


def init_weights(module: nnx.Module, rngs: nnx.Rngs) -> None:
    """Re-initializes every Linear, Embed and LayerNorm inside ``module`` (itself included), in place."""
    for _, sub in nnx.iter_graph(module):
        if isinstance(sub, nnx.Linear):
            _fill(sub.kernel, LINEAR_KERNEL_INIT, rngs)
            if sub.bias is not None:
                _fill(sub.bias, ZEROS_INIT, rngs)
        elif isinstance(sub, nnx.Embed):
            _fill(sub.embedding, EMBEDDING_INIT, rngs)
        elif isinstance(sub, nnx.LayerNorm):
            if sub.scale is not None:
                _fill(sub.scale, ONES_INIT, rngs)
            if sub.bias is not None:
                _fill(sub.bias, ZEROS_INIT, rngs)


def _fill(variable: nnx.Param, initializer, rngs: nnx.Rngs) -> None:
    current = variable[...]
    variable[...] = initializer(rngs.params(), current.shape, current.dtype)
