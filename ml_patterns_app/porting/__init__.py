"""Check your own port: a PyTorch module and its Flax NNX twin, compared step by step.

    from ml_patterns_app.porting import transfer_weights, compare_forward, compare_gradients, compare_training

    print(transfer_weights(torch_model, nnx_model, dry_run=True))   # the mapping, nothing written
    transfer_weights(torch_model, nnx_model)                        # torch -> NNX ("to_torch": back)
    print(compare_forward(torch_model, nnx_model, (tokens, mask)))  # the first layer that diverges
    print(compare_gradients(torch_model, nnx_model, batch, loss_torch, loss_jax))
    print(compare_optimizers(lambda p: torch.optim.Adam(p, lr=1e-3), optax.adam(1e-3)))
    report = compare_training(torch_model, nnx_model, lambda p: torch.optim.Adam(p, lr=1e-3),
                              optax.adam(1e-3), batches, loss_torch, loss_jax)
    report.plot("drift.png")

A Flax linen model counts as NNX once wrapped: ``nnx.bridge.ToNNX(linen_module, rngs=nnx.Rngs(0))
.lazy_init(*inputs)``. A comparison refuses weights that do not correspond, and a report without
evidence (no rows, parameters left uncompared) fails. Tolerances are the policy's
(``ml_patterns.parity``); docs/PORTING.md is the walk-through. Names
are imported on first use, so the verdict's names (``ml_patterns.verdict``, numpy only) load without
torch or JAX.
"""

import importlib

# name -> the module defining it: a submodule of this package, or a full module name.
_EXPORTS = {
    "FLOOR_MULTIPLE": "ml_patterns.verdict",
    "LayerReport": "report",
    "PortingError": "mapping",
    "Row": "report",
    "Rule": "rules",
    "TensorMap": "rules",
    "TrainingReport": "training",
    "Verdict": "ml_patterns.verdict",
    "WeightMap": "mapping",
    "compare_forward": "forward",
    "compare_gradients": "gradients",
    "compare_optimizers": "optimizer",
    "compare_training": "training",
    "judge": "ml_patterns.verdict",
    "map_weights": "mapping",
    "register_rule": "rules",
    "transfer_weights": "transfer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _EXPORTS[name]
    return getattr(importlib.import_module(module if "." in module else f"{__name__}.{module}"), name)


def __dir__():
    return __all__
