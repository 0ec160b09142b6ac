"""Models, torch side: the seed's ``BaseModel``, ``EncoderDecoder`` and ``MultiTaskModel``, generic.

``jax_impl.models`` mirrors this module class for class; the contract is documented here once. The
molecule models (``torch_impl.molecules.models``) are one application of these classes.

The contract (``BaseModel``, an ``nn.Module``)
    ``forward(...)`` (JAX: ``__call__``) and ``compute_loss(batch) -> scalar``, the loss a trainer
    minimizes; ``batch`` is whatever the loader yields (usually a dict of tensors). ``loss_parts(batch)
    -> (total, {part: value})`` gives the total with its named parts for logging (``{}`` when the
    model has none). A model defines its loss in one of these ways:

    - a subclass overrides ``compute_loss(batch)`` (the seed's way; ``loss_parts`` then returns it
      with no parts), or ``loss_parts(batch)`` (``compute_loss`` is then its total);
    - or the model is given ``loss_fn(model, batch) -> total | (total, {part: value})`` when built,
      e.g. ``EncoderDecoder(enc, dec, loss_fn=lambda m, b: F.mse_loss(m(b["x"]), b["x"]))``.

    A model with neither raises ``NotImplementedError`` saying so. ``save(path)`` writes the weights
    as a portable safetensors checkpoint (``ml_patterns.checkpoint``, readable by both backends);
    ``load(path, device=None)`` reads one, or a file written by the seed's ``torch.save(state_dict)``
    (through ``torch.load(..., weights_only=True)`` only), into this model and moves the model to
    ``device`` when given. ``config``: the description the model was built from, stored in checkpoints
    so a loader can rebuild it (the molecule models' ``ModelConfig``; None otherwise).

Compositions (the seed's, on plain tensors and any submodules)
    ``EncoderDecoder(encoder, decoder)``: ``encode(x) = encoder(x)``, ``decode(z, *context) =
    decoder(z, *context)`` (extra inputs, e.g. teacher-forcing targets, pass through to the decoder),
    ``forward(x) = decode(encode(x))``.
    ``MultiTaskModel(backbone, heads)``: ``forward(x, task=None) -> {task: head(backbone(x))}`` for
    every head, or for ``task`` alone; an unknown task raises ``KeyError`` listing the known ones.
    ``heads`` is a mapping name -> module, held in an ``nn.ModuleDict`` (its names become parameter
    names: ``heads.<name>.weight``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ml_patterns import checkpoint
from ml_patterns.models import LossFn, LossMixin
from torch_impl import state


class BaseModel(LossMixin, nn.Module):
    """The model contract (module docstring); the loss half is ``ml_patterns.models.LossMixin``."""

    config = None  # the molecule models set their ModelConfig; stored in checkpoints

    def __init__(self, loss_fn: LossFn | None = None):
        super().__init__()
        self.loss_fn = loss_fn

    def save(self, path: str | os.PathLike) -> None:
        checkpoint.save_checkpoint(
            path,
            state.to_numpy(self),
            backend="torch",
            model_class=type(self).__name__,
            config=self.config,
            versions={"torch": torch.__version__},
        )

    def load(self, path: str | os.PathLike, device: torch.device | str | None = None) -> BaseModel:
        """Loads weights saved by either backend, or by ``torch.save(state_dict)``, into this model in
        place, then moves it to ``device`` if given; returns the model.

        Raises:
            ml_patterns.checkpoint.CheckpointError: a file that is neither (saying what it is).
            ml_patterns.checkpoint.WeightMismatchError: weights that do not fit this model.
        """
        state.from_numpy(self, state.read_weights(path), source=str(path))
        return self if device is None else self.to(device)


class EncoderDecoder(BaseModel):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, *, loss_fn: LossFn | None = None):
        super().__init__(loss_fn)
        self.encoder, self.decoder = encoder, decoder

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z, *context):
        return self.decoder(z, *context)

    def forward(self, x):
        return self.decode(self.encode(x))


class MultiTaskModel(BaseModel):
    def __init__(self, backbone: nn.Module, heads: Mapping[str, nn.Module], *, loss_fn: LossFn | None = None):
        super().__init__(loss_fn)
        if not heads:
            raise ValueError("MultiTaskModel needs at least one head")
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    def forward(self, x, task: str | None = None) -> dict[str, Any]:
        if task is not None and task not in self.heads:
            raise KeyError(f"unknown task {task!r}; known tasks: {list(self.heads)}")
        features = self.backbone(x)
        names = list(self.heads) if task is None else [task]
        return {name: self.heads[name](features) for name in names}
