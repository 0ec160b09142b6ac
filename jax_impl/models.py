"""Models, JAX side (Flax NNX): the seed's ``BaseModel``, ``EncoderDecoder`` and ``MultiTaskModel``,
generic. The contract is documented once in ``torch_impl.models``; this module mirrors it class for
class and attribute for attribute, so ``jax_impl.state`` maps parameter paths onto torch's names by rule.

Divergences, and why:

- ``__call__`` is the forward pass (NNX's convention); ``train()`` / ``eval()`` set dropout's
  ``deterministic`` flag as in torch, and a freshly built model is in training mode, like torch's.
- The pure functional form for ``jax.jit`` and ``jax.grad`` (which torch has no need of), for any
  NNX module with ``compute_loss(batch)``:

      fn, params, rest = functional(model)        # nnx.split(model, nnx.Param, ...)
      loss_and_grad = jax.jit(jax.value_and_grad(fn.compute_loss, has_aux=True), static_argnames="train")
      (loss, rest), grads = loss_and_grad(params, rest, batch, key=key, train=True)

  ``params`` are the trainable ``nnx.Param`` leaves, ``rest`` everything else (dropout streams' RNG
  state, batch statistics), returned as the call left it. ``fn.loss`` is the same for models with
  ``loss_parts`` and returns ``(total, {part: value})``.
  With ``train=True`` dropout is on and its masks are a pure function of ``key`` (every stream is
  reseeded from it, each to a distinct key), so a step is deterministic given its key; with
  ``train=False`` (the default) no key is needed. ``fn.merge(params, rest)`` rebuilds the module.
- Out-of-vocabulary ids: torch's embedding raises; ``jnp.take`` under jit cannot, and fills NaN.
  ``ml_patterns.molecules.batches`` checks ids on the host before either backend sees them.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from jax_impl import state
from jax_impl.precision import autocast
from ml_patterns import checkpoint
from ml_patterns.models import LossFn, LossMixin


class BaseModel(LossMixin, nnx.Module):
    config = None  # the molecule models set their ModelConfig; stored in checkpoints

    def __init__(self, loss_fn: LossFn | None = None):
        self.loss_fn = loss_fn

    def save(self, path: str | os.PathLike) -> None:
        checkpoint.save_checkpoint(
            path,
            state.to_numpy(self),
            backend="jax",
            model_class=type(self).__name__,
            config=self.config,
            versions={name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "flax")},
        )

    def load(self, path: str | os.PathLike, device: jax.Device | str | None = None) -> BaseModel:
        """Loads a portable checkpoint (either backend's) in place; ``device`` (a ``jax.Device`` or a
        platform name such as ``"cpu"``) puts the parameters and running statistics there. A
        ``torch.save`` file is refused with the command that converts it."""
        arrays, _ = checkpoint.load_checkpoint(path)
        state.from_numpy(self, arrays, source=str(path))
        if device is not None:
            device = jax.devices(device)[0] if isinstance(device, str) else device
            nnx.update(self, jax.device_put(nnx.state(self, state.STATE), device))
        return self


class EncoderDecoder(BaseModel):
    def __init__(self, encoder: nnx.Module, decoder: nnx.Module, *, loss_fn: LossFn | None = None):
        super().__init__(loss_fn)
        self.encoder, self.decoder = encoder, decoder

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z, *context):
        return self.decoder(z, *context)

    def __call__(self, x):
        return self.decode(self.encode(x))


class MultiTaskModel(BaseModel):
    def __init__(self, backbone: nnx.Module, heads: Mapping[str, nnx.Module], *, loss_fn: LossFn | None = None):
        super().__init__(loss_fn)
        if not heads:
            raise ValueError("MultiTaskModel needs at least one head")
        self.backbone = backbone
        self.heads = nnx.Dict(heads)

    def __call__(self, x, task: str | None = None) -> dict[str, Any]:
        if task is not None and task not in self.heads:
            raise KeyError(f"unknown task {task!r}; known tasks: {list(self.heads)}")
        features = self.backbone(x)
        names = list(self.heads) if task is None else [task]
        return {name: self.heads[name](features) for name in names}


@dataclasses.dataclass(frozen=True)
class Functional:
    """Pure functions of ``(params, rest)``; see the module docstring. Hashable, so a bound method
    (``fn.loss``) can be jitted directly."""

    graphdef: nnx.GraphDef
    # The autocast layers' computation dtype in the traced copy (``jax_impl.precision.autocast``);
    # None: the parameters' own.
    compute_dtype: Any = None

    def merge(self, params: nnx.State, rest: nnx.State) -> BaseModel:
        return nnx.merge(self.graphdef, params, rest)

    def apply(self, params, rest, batch: dict, *, key: jax.Array | None = None, train: bool = False, **kwargs) -> dict:
        """``model(batch, **kwargs)`` (e.g. ``task=``), as a pure function."""
        return self._model(params, rest, key, train)(batch, **kwargs)

    def compute_loss(self, params, rest, batch, *, key: jax.Array | None = None, train: bool = False):
        """``(loss, rest after the call)``: ``model.compute_loss(batch)`` as a pure function; the
        trainers' steps are built on it. ``rest`` comes back as the call left it (batch statistics)."""
        model = self._model(params, rest, key, train)
        loss = model.compute_loss(batch)
        return loss, nnx.split(model, nnx.Param, ...)[2]

    def loss_sums(self, params, rest, batch, weight, *, key: jax.Array | None = None, train: bool = False):
        """``({part: (sum, count)}, rest after the call)``: ``model.loss_sums(batch, weight)`` as a pure
        function, for data-parallel steps (``ml_patterns.distributed``)."""
        model = self._model(params, rest, key, train)
        return model.loss_sums(batch, weight), nnx.split(model, nnx.Param, ...)[2]

    def loss(self, params, rest, batch: dict, *, key: jax.Array | None = None, train: bool = False):
        """``(total loss, {part: loss})``: ``model.loss_parts(batch)`` as a pure function."""
        return self._model(params, rest, key, train).loss_parts(batch)

    def _model(self, params, rest, key, train: bool) -> BaseModel:
        # copy=True: fresh Variables at this trace level; reusing the state's own Variables makes
        # the dropout streams' updates fail under jax.grad (TraceContextError).
        model = nnx.merge(self.graphdef, params, rest, copy=True)
        if self.compute_dtype is not None:
            autocast(model, self.compute_dtype)
        if train:
            if key is None:
                raise ValueError("train=True needs a dropout key (jax.random.key)")
            model.train()
            nnx.reseed(model, dropout=key)
        else:
            model.eval()
        return model


def functional(model: nnx.Module, compute_dtype: Any = None) -> tuple[Functional, nnx.State, nnx.State]:
    """``(Functional, params, rest)`` from ``nnx.split(model, nnx.Param, ...)``; ``compute_dtype``
    (e.g. ``jnp.bfloat16``): the bf16-mixed policy of ``jax_impl.precision``, params kept float32."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return Functional(graphdef, compute_dtype), params, rest
