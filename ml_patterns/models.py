"""The framework-free half of the model contract (documented in ``torch_impl.models``): where a
model's loss comes from, and the weighted loss of heads that know their own losses. Both backends'
``BaseModel`` inherit ``LossMixin``; this module imports neither torch nor JAX."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ml_patterns.losses import weighted_sum

LossFn = Callable[[Any, Any], Any]


class LossMixin:
    """``compute_loss(batch)`` and ``loss_parts(batch)``, each defined by the other, or by
    ``self.loss_fn(model, batch) -> total | (total, {part: value})``."""

    loss_fn: LossFn | None = None

    def loss_parts(self, batch) -> tuple[Any, dict[str, Any]]:
        if self.loss_fn is not None:
            out = self.loss_fn(self, batch)
            return out if isinstance(out, tuple) else (out, {})
        if type(self).compute_loss is not LossMixin.compute_loss:
            return self.compute_loss(batch), {}
        raise NotImplementedError(
            f"{type(self).__name__} has no loss: pass loss_fn=fn(model, batch) when building it, or define "
            "compute_loss(batch) (or loss_parts(batch)) in a subclass"
        )

    def compute_loss(self, batch) -> Any:
        """The scalar loss of ``batch``: what a trainer minimizes."""
        return self.loss_parts(batch)[0]


def head_losses(backbone: Callable, heads: Any, batch: dict) -> tuple[Any, dict[str, Any]]:
    """``(sum(head.loss_weight * loss), {name: loss})`` over ``heads`` (name -> head), each head
    scoring ``head(backbone(...))`` with ``head.loss(output, batch)``. A head's ``input_key`` names
    the batch key of the token ids it is trained on (the backbone reads them as ``input_ids``): one
    backbone pass per distinct key."""
    outputs = _head_outputs(backbone, heads, batch)
    losses = {name: head.loss(outputs[name], batch) for name, head in heads.items()}
    return weighted_sum(losses, {name: head.loss_weight for name, head in heads.items()}), losses


def head_loss_sums(backbone: Callable, heads: Any, batch: dict, weight: Any) -> dict[str, tuple[Any, Any]]:
    """``head_losses`` for data-parallel training (``ml_patterns.distributed``): ``{name:
    (head.loss_weight * sum, count)}`` from each head's ``loss_sums(output, batch, weight)``."""
    outputs = _head_outputs(backbone, heads, batch)
    parts = {}
    for name, head in heads.items():
        total, count = head.loss_sums(outputs[name], batch, weight)
        parts[name] = (head.loss_weight * total, count)
    return parts


def _head_outputs(backbone: Callable, heads: Any, batch: dict) -> dict[str, Any]:
    features, outputs = {}, {}
    for name, head in heads.items():
        if head.input_key not in features:
            features[head.input_key] = backbone({**batch, "input_ids": batch[head.input_key]})
        outputs[name] = head(features[head.input_key])
    return outputs
