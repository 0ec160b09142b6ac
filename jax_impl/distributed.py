"""Data parallelism, JAX side: a ``Mesh`` over the devices, the batch sharded along ``"data"``,
parameters and optimizer state replicated (``NamedSharding`` + ``jax.jit``). The contract:
``ml_patterns.distributed``; the names mirror ``torch_impl.distributed``.

Divergences, and why:

- One process drives all its local devices, so there is no ``launch``: ``setup()`` builds the mesh
  over ``jax.devices()``. Several hosts: call ``jax.distributed.initialize()`` in every process first
  (docs/DISTRIBUTED.md); ``jax.devices()`` then lists every host's devices. ``context.rank`` is
  ``jax.process_index()``, ``world_size`` the number of devices the batch is split over.
- The step is the Trainer's own pure step (``jax_impl.training.make_steps(..., distributed=context)``)
  jitted over the GLOBAL batch (``ml_patterns.distributed.global_layout``: device r holds rank r's
  shard), with ``global_loss`` for its loss: it differentiates ``global_mean(loss_sums(batch,
  weight))`` itself, and XLA inserts the cross-device sums, so no ``ddp_objective`` scaling is needed
  and torch's ``make_train_step``/``make_eval_step`` have no twin here. Dropout masks, drawn inside
  that jit, are drawn once for the global batch, never repeated per device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_impl.models import Functional
from ml_patterns.distributed import DATA_AXIS, global_mean


@dataclasses.dataclass(frozen=True)
class Context:
    """The mesh the batch is split over (see ``torch_impl.distributed.Context``)."""

    mesh: Mesh

    @property
    def world_size(self) -> int:
        return self.mesh.size

    @property
    def rank(self) -> int:
        return jax.process_index()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))


def setup(devices: list[jax.Device] | None = None) -> Context:
    """A one-axis (``"data"``) mesh over ``devices`` (default: every device, of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("setup needs at least one device")
    return Context(Mesh(np.array(devices), (DATA_AXIS,)))


def shard_batch(batch: Any, context: Context) -> Any:
    """A global-layout batch (a pytree of numpy arrays, leading axis ``world_size * rows``; the row
    weight too) as JAX arrays split along the leading axis, block r on device r."""

    def put(path, array):
        array = np.asarray(array)
        if array.ndim == 0 or array.shape[0] % context.world_size:
            name = jax.tree_util.keystr(path)
            raise ValueError(
                f"batch{name} has shape {array.shape}: its leading axis must divide by the {context.world_size} "
                "devices; build the batch from ml_patterns.distributed.global_layout"
            )
        # Each process fills only the blocks of its own devices (every process holds the same global
        # batch, from the same sampler), so this also builds the array across several hosts.
        return jax.make_array_from_callback(array.shape, context.batch_sharding, lambda index: array[index])

    return jax.tree_util.tree_map_with_path(put, batch)


def safe_divide(total: jax.Array, count: jax.Array) -> jax.Array:
    """``total / count``; where ``count == 0`` (every position masked: ``total`` is 0 too) 0, not NaN."""
    return total / jnp.where(count > 0, count, jnp.ones_like(count))


def global_loss(fn: Functional, params: nnx.State, rest: nnx.State, batch: tuple, *, key=None, train: bool = False):
    """``(global loss, rest after the call)`` of a data-parallel batch ``(rows, weight)`` in
    ``global_layout``: ``global_mean(model.loss_sums(rows, weight))``, whose gradient is the
    global-mean gradient (XLA inserts the cross-device sums); ``fn`` is ``models.functional``'s."""
    rows, weight = batch
    parts, rest = fn.loss_sums(params, rest, rows, weight, key=key, train=train)
    return global_mean(parts, safe_divide), rest
