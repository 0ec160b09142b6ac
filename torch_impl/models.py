"""Models, torch side: the contract, the generic compositions and the molecule models.

``jax_impl.models`` mirrors this module class for class, attribute for attribute (so parameter
paths match and ``state`` maps them by rule, not by table); the contract is documented here once.

The contract (``BaseModel``)
    ``forward(batch) -> dict[str, Tensor]`` (JAX: ``__call__``), ``loss_parts(batch) -> (total,
    {part: value})`` with ``compute_loss(batch)`` its total, a scalar; ``save(path)`` / ``load(path)``
    write and read a portable checkpoint (``ml_patterns.checkpoint``). Batches are dicts of tensors
    built by ``ml_patterns.molecules.batches`` (the keys each model reads are listed there) and converted with
    ``as_batch``. ``train()`` / ``eval()`` switch dropout.

Compositions
    ``EncoderDecoder(encoder, decoder)``: ``encode(batch) -> dict``, ``decode(encoded, batch) -> dict``,
    ``forward(batch)`` returns both dicts merged; the loss is the decoder's ``loss(decoded, batch)``.
    ``MultiTaskModel(backbone, heads)``: ``backbone(batch) -> features`` (a dict); each head maps the
    features to its output and knows its own loss (``head.loss(output, batch)``), weight
    (``head.loss_weight``) and input (``head.input_key``: the batch key holding the token ids its loss
    is trained on). ``forward(batch, task=None)`` runs every head on ``batch["input_ids"]`` and returns
    ``{task: output}``; ``task="TPSA"`` returns ``{"TPSA": output}`` alone; an unknown task raises
    ``KeyError`` listing the known ones. The total loss is ``CombinedLoss`` of the heads' losses.

"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ml_patterns import checkpoint
from ml_patterns.molecules.config import ModelConfig, unknown_task_error
from torch_impl import state
from torch_impl.losses import CombinedLoss


class BaseModel(nn.Module):
    """The model contract (module docstring). ``config`` is the ``ModelConfig`` it was built from,
    stored in checkpoints so ``load_model`` can rebuild it (None for hand-assembled models)."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config

    def loss_parts(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def compute_loss(self, batch: dict) -> torch.Tensor:
        return self.loss_parts(batch)[0]

    def save(self, path: str | os.PathLike) -> None:
        checkpoint.save_checkpoint(
            path,
            state.to_numpy(self),
            backend="torch",
            model_class=type(self).__name__,
            config=self.config,
            versions={"torch": torch.__version__},
        )

    def load(self, path: str | os.PathLike) -> BaseModel:
        """Loads a checkpoint written by either backend into this model, in place; returns it."""
        arrays, _ = checkpoint.load_checkpoint(path)
        state.from_numpy(self, arrays, source=str(path))
        return self


class EncoderDecoder(BaseModel):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, *, config: ModelConfig | None = None):
        super().__init__(config)
        self.encoder, self.decoder = encoder, decoder

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.encoder(batch)

    def decode(self, encoded: dict, batch: dict) -> dict[str, torch.Tensor]:
        return self.decoder(encoded, batch)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        encoded = self.encode(batch)
        return {**encoded, **self.decode(encoded, batch)}

    def loss_parts(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        decoded = self.decode(self.encode(batch), batch)
        return self.decoder.loss(decoded, batch)


class MultiTaskModel(BaseModel):
    def __init__(self, backbone: nn.Module, heads: Mapping[str, nn.Module], *, config: ModelConfig | None = None):
        super().__init__(config)
        if not heads:
            raise ValueError("MultiTaskModel needs at least one head")
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    def forward(self, batch: dict, task: str | None = None) -> dict[str, torch.Tensor]:
        if task is not None and task not in self.heads:
            raise unknown_task_error(task, self.heads.keys())
        features = self.backbone(batch)
        names = list(self.heads) if task is None else [task]
        return {name: self.heads[name](features) for name in names}

    def loss_parts(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features, outputs = {}, {}
        for name, head in self.heads.items():
            if head.input_key not in features:  # one backbone pass per distinct input
                features[head.input_key] = self.backbone({**batch, "input_ids": batch[head.input_key]})
            outputs[name] = head(features[head.input_key])
        combined = CombinedLoss(
            {name: head.loss for name, head in self.heads.items()},
            {name: head.loss_weight for name, head in self.heads.items()},
        )
        return combined(outputs, {name: batch for name in self.heads})


def as_batch(batch: Mapping, device: torch.device | str | None = None) -> dict:
    """A batch of numpy arrays (``ml_patterns.molecules.batches``) as tensors: integers as int64, the rest kept."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, Mapping):
            out[key] = as_batch(value, device)
        else:
            array = np.asarray(value)
            dtype = torch.int64 if np.issubdtype(array.dtype, np.integer) else None
            out[key] = torch.tensor(array, dtype=dtype, device=device)
    return out
