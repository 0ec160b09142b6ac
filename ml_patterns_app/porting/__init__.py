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

Tolerances are the policy's (``ml_patterns.parity``); see docs/PORTING.md for the walk-through.
"""

from ml_patterns_app.porting.forward import compare_forward
from ml_patterns_app.porting.gradients import compare_gradients
from ml_patterns_app.porting.mapping import PortingError, WeightMap, map_weights
from ml_patterns_app.porting.optimizer import compare_optimizers
from ml_patterns_app.porting.report import FALLBACK_BOUND, LayerReport, Row
from ml_patterns_app.porting.rules import Rule, TensorMap, register_rule
from ml_patterns_app.porting.training import FLOOR_MULTIPLE, TrainingReport, compare_training, drift_and_floor
from ml_patterns_app.porting.transfer import transfer_weights

__all__ = [
    "FALLBACK_BOUND",
    "FLOOR_MULTIPLE",
    "LayerReport",
    "PortingError",
    "Row",
    "Rule",
    "TensorMap",
    "TrainingReport",
    "WeightMap",
    "compare_forward",
    "compare_gradients",
    "compare_optimizers",
    "compare_training",
    "drift_and_floor",
    "map_weights",
    "register_rule",
    "transfer_weights",
]
