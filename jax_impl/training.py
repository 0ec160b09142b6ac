"""Training loop and Trainer, JAX side: a pure ``train_step(state, batch) -> (state, metrics)``
(jitted: the gradients once per batch shape, the optax update once) with the state donated. The
contract: ``torch_impl.training``.

Divergences, and why:

- The model is any Flax NNX module with ``compute_loss(batch) -> scalar``; the optimizer an
  ``optax.GradientTransformation`` or an ``OptimizerConfig``. The step is built from the model's
  ``compute_loss`` through its pure form (``models.functional``); batches go to the device with
  ``jax.device_put`` (numpy int64 becomes int32, JAX's default).

- The state is a pytree, ``TrainState(params, rest, opt_state, step)``; the model object is
  updated from it lazily (``sync_model``: once per epoch, or when a callback or ``save_checkpoint``
  needs the weights), as Keras' JAX trainer does, never per step.
- ``accumulate_steps``: a group's micro-batches run in one jitted program
  (``accumulated_gradients``, compiled per group signature) that sums their
  sample-weighted gradients; the shared update program then applies them. No ``scheduler``
  argument: a schedule is part of the optax transformation (stepped per update, checkpointed with
  its state).
- Dropout masks are a pure function of ``(config.seed, step)`` (``jax.random.fold_in``), so a
  resumed run draws exactly the masks of the uninterrupted one with no RNG state to save.
- ``distributed``: a ``jax_impl.distributed.Context`` (or True: every device) shards each global
  batch over its mesh, block r on device r (``ml_patterns.distributed.global_layout``), state
  replicated; the model needs ``loss_sums(batch, weight)`` (docs/DISTRIBUTED.md).
- The state is donated to the step: its buffers are reused in place. The model's own arrays are
  never handed to the step (they are copied in and out), so donation cannot invalidate them.
- ``pad_batches_to`` (``ml_patterns.training.TrainerBase``): under data parallelism each device
  computes ``ceil(N / devices)`` rows, the global batch laid out as ``distributed.global_layout``.
- ``precision="bf16-mixed"``: JAX has no autocast; the jitted loss applies ``jax_impl.precision``'s
  policy to the model it traces (the autocast layers compute in bfloat16 from float32 parameters),
  and the steps trace under the precision's ``jax.default_matmul_precision``.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_impl import distributed as distributed_
from jax_impl import state as weights
from jax_impl.models import Functional, functional
from jax_impl.optim import build_optimizer
from jax_impl.precision import compute_dtype, matmul_precision
from jax_impl.training_state import OptimizerCheckpoint
from ml_patterns import checkpoint
from ml_patterns.callbacks import Callback
from ml_patterns.distributed import global_rows
from ml_patterns.optim import OptimizerConfig
from ml_patterns.training import BatchTransform, TrainerBase, leading_dimension


class TrainState(NamedTuple):
    params: nnx.State
    rest: nnx.State  # non-trainable module state (dropout RNG streams, batch statistics)
    opt_state: optax.OptState
    step: jax.Array  # int32: optimizer updates so far


def make_steps(
    model: nnx.Module,
    optimizer: OptimizerConfig | optax.GradientTransformation,
    seed: int,
    distributed: distributed_.Context | None = None,
    weighted_rows: bool = False,
    precision: str = "float32",
):
    """``(train_step, eval_step)`` for ``model`` under ``precision`` (``ml_patterns.precision``).

    ``train_step(state, batch) -> (state, {"loss": scalar})`` from ``model.compute_loss``: a
    ``TrainStep``, two jitted programs (the loss and its gradients, compiled once per batch shape;
    the optimizer update, compiled once), the state donated. ``eval_step(params, rest, batch) ->
    loss`` (dropout off), jitted. Trainers of the same model structure, optimizer (config, or the
    same transformation object) and seed share the compiled steps (a resumed trainer does not
    recompile). With ``weighted_rows``, ``batch`` is ``(rows, weight)`` (``weight``: float32
    ``[rows]``, 0 for padding) and the loss ``distributed.global_loss``, the global mean of the
    model's ``loss_sums``; ``distributed`` implies it, the batch sharded over its mesh
    (``distributed.shard_batch``) and the state kept replicated.
    """
    fn, _, _ = functional(model, compute_dtype(precision))
    weighted_rows = weighted_rows or distributed is not None
    return _compiled_steps(fn, optimizer, seed, distributed, weighted_rows, matmul_precision(precision))


class TrainStep:
    """``train_step(state, batch) -> (state, {"loss": loss})``, pure, as two jitted programs.

    ``gradients(params, rest, batch, step) -> (loss, rest, grads)`` depends on the batch's shape, so
    it compiles once per padded length; ``update(params, opt_state, step, grads)`` (the optimizer:
    clipping, schedule, Adam) does not, so it compiles once. One program for both would compile,
    and on later runs trace and load from the compile cache, the optimizer again with every batch
    shape (docs/PERFORMANCE.md).
    Calling it inside an outer ``jax.jit`` traces both into one program.
    """

    def __init__(self, gradients, update):
        self.gradients, self.update = gradients, update

    def __call__(self, state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        loss, rest, grads = self.gradients(state.params, state.rest, batch, state.step)
        params, opt_state, step = self.update(state.params, state.opt_state, state.step, grads)
        return TrainState(params, rest, opt_state, step), {"loss": loss}

    def accumulate(
        self, state: TrainState, batches: Sequence[Any], shares: jax.Array, accumulate_steps: int
    ) -> tuple[TrainState, dict]:
        """One update from a group of micro-batches (``accumulated_gradients``), the optimizer
        (clipping included) applied once, by the update program every group shares."""
        program = accumulated_gradients(self.gradients, accumulate_steps)
        loss, rest, grads = program(state.params, state.rest, tuple(batches), shares, state.step)
        params, opt_state, step = self.update(state.params, state.opt_state, state.step, grads)
        return TrainState(params, rest, opt_state, step), {"loss": loss}

    def compilations(self) -> int:
        """Programs compiled so far: one per batch signature for the gradients, and the update's."""
        return compilations(self.gradients) + compilations(self.update)


def compilations(step) -> int:
    """Programs a jitted function compiled so far."""
    return int(step._cache_size())  # a jitted function's count of its executables (jax has no public one)


@functools.lru_cache(maxsize=16)
def _compiled_steps(
    fn: Functional,
    optimizer,
    seed: int,
    distributed: distributed_.Context | None,
    weighted_rows: bool,
    matmul: str,
):
    transformation = build_optimizer(optimizer) if isinstance(optimizer, OptimizerConfig) else optimizer
    base_key = jax.random.key(seed)
    loss_fn = functools.partial(distributed_.global_loss, fn) if weighted_rows else fn.compute_loss
    # One device: the outputs follow the inputs. A mesh: state, gradients and loss replicated on every device.
    out_shardings = None if distributed is None else distributed.replicated

    def gradients(params: nnx.State, rest: nnx.State, batch: Any, step: jax.Array):
        key = jax.random.fold_in(base_key, step)
        with jax.default_matmul_precision(matmul):
            (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, batch, key=key, train=True)
        return loss.astype(jnp.float32), rest, grads  # float32 already, unless a model's loss is bfloat16

    def update(params: nnx.State, opt_state: Any, step: jax.Array, grads: nnx.State):
        updates, opt_state = transformation.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, step + 1

    def eval_step(params: nnx.State, rest: nnx.State, batch: Any) -> jax.Array:
        with jax.default_matmul_precision(matmul):
            return loss_fn(params, rest, batch)[0].astype(jnp.float32)

    # Donated: the state's buffers are reused for the new state in place (the gradients' could only
    # alias the parameters' again, so they are left to be freed).
    train_step = TrainStep(
        jax.jit(gradients, donate_argnums=1, out_shardings=out_shardings),
        jax.jit(update, donate_argnums=(0, 1, 2), out_shardings=out_shardings),
    )
    return train_step, jax.jit(eval_step, out_shardings=out_shardings)


def accumulated_gradients(gradients, accumulate_steps: int):
    """``program(params, rest, batches, shares, step) -> (loss, rest, grads)``, one jitted
    program for a group of micro-batches (compiled once per group signature: the number of
    micro-batches and their shapes).

    ``grads = sum_b shares[b] * grad(loss_b)`` and ``loss = sum_b shares[b] * loss_b`` with
    ``shares[b] = n_b / sum(n)`` (float32 ``[len(batches)]``): the gradient and the loss of one
    batch holding every sample of the group, each sample weighing the same (a short last
    micro-batch counts for its samples, not as a full one; the mean of the micro-batches' means,
    ``optax.MultiSteps``'s rule, would not). Micro-batch ``b`` of update ``step`` draws its dropout
    key from ``step * accumulate_steps + b``: every micro-batch gets masks of its own.
    """
    return _accumulated(gradients, accumulate_steps)


@functools.lru_cache(maxsize=16)
def _accumulated(gradients, accumulate_steps: int):
    def program(params: nnx.State, rest: nnx.State, batches: Sequence[Any], shares: jax.Array, step: jax.Array):
        loss, summed = None, None
        for index, batch in enumerate(batches):
            part, rest, grads = gradients(params, rest, batch, step * accumulate_steps + index)
            weight = shares[index]
            grads = jax.tree.map(lambda g, w=weight: g * w, grads)
            summed = grads if summed is None else jax.tree.map(jnp.add, summed, grads)
            loss = part * weight if loss is None else loss + part * weight
        return loss, rest, summed

    return jax.jit(program, donate_argnums=1)


class Trainer(OptimizerCheckpoint, TrainerBase):
    """See ``torch_impl.training`` for the contract; the loop is ``ml_patterns.training.TrainerBase``.

    ``seed``: of the dropout keys (default: the model's ``config.seed`` if it has one, else 0).
    ``pad_batches_to``: see ``ml_patterns.training.TrainerBase``.
    """

    backend = "jax"

    def __init__(
        self,
        model: nnx.Module,
        optimizer: OptimizerConfig | optax.GradientTransformation,
        callbacks: Sequence[Callback] = (),
        *,
        device: str | jax.Device | None = None,
        batch_transform: BatchTransform | None = None,
        stop_on_non_finite: bool = True,
        seed: int | None = None,
        distributed: distributed_.Context | bool | None = None,
        pad_batches_to: int | None = None,
        precision: str = "float32",
        accumulate_steps: int = 1,
    ):
        if isinstance(optimizer, OptimizerConfig):
            config = optimizer
        elif isinstance(optimizer, optax.GradientTransformation):
            config = None
        else:
            raise TypeError(
                "optimizer must be an optax.GradientTransformation or an OptimizerConfig, "
                f"got {type(optimizer).__name__}"
            )
        if distributed is True:
            distributed = distributed_.setup()
        if distributed and device is not None:
            raise ValueError(f"device={device} and distributed: the mesh names the devices, leave device out")
        super().__init__(
            model,
            config,
            callbacks,
            batch_transform=batch_transform,
            stop_on_non_finite=stop_on_non_finite,
            distributed=distributed or None,
            pad_batches_to=pad_batches_to,
            precision=precision,
            accumulate_steps=accumulate_steps,
        )
        self.device = jax.devices(device)[0] if isinstance(device, str) else device
        self.optimizer = build_optimizer(optimizer) if config is not None else optimizer
        if seed is None:
            seed = getattr(getattr(model, "config", None), "seed", 0)
        self.train_step, self.eval_step = make_steps(
            model, optimizer, seed, self.distributed, self.weighted_rows, self.precision
        )
        self.state = self._initial_state()

    def _initial_state(self) -> TrainState:
        _, params, rest = functional(self.model)
        params = _device_copy(params)  # the step donates its state: never the model's arrays
        step = jnp.zeros((), jnp.int32)
        return self._committed(TrainState(params, _device_copy(rest), self.optimizer.init(params), step))

    def _committed(self, state: TrainState) -> TrainState:
        # Every leaf committed to the device, as the step's outputs are: a state mixing committed and
        # uncommitted arrays would make the second call of the step compile it again.
        if self.distributed is not None:
            return jax.device_put(state, self.distributed.replicated)
        return jax.device_put(state, self.device or jax.devices()[0])

    def _to_batch(self, batch: Any) -> Any:
        if not self.weighted_rows:
            return to_device(batch, self.device)
        n = leading_dimension(batch)
        world_size = 1 if self.distributed is None else self.distributed.world_size
        rows = global_rows(batch, n, world_size, self.rows_per_device(n, world_size))
        if self.distributed is None:
            return to_device(rows, self.device)
        return distributed_.shard_batch(rows, self.distributed)

    def _train_step(self, batch: Any) -> jax.Array:
        self.state, metrics = self.train_step(self.state, batch)
        return metrics["loss"]

    def _accumulate_step(self, batches: list, counts: list[int]) -> jax.Array:
        # The shares n_b / N rounded to float32 as the torch side's are; sent explicitly.
        shares = np.array([n / sum(counts) for n in counts], np.float32)
        shares = jax.device_put(shares, self.device or jax.devices()[0])
        self.state, metrics = self.train_step.accumulate(self.state, batches, shares, self.accumulate_steps)
        return metrics["loss"]

    def _eval_step(self, batch: Any) -> jax.Array:
        return self.eval_step(self.state.params, self.state.rest, batch)

    def _after_epoch(self) -> None:
        self.sync_model()

    def _epoch_total(self, losses: list, counts: list[int]) -> np.float32:
        # Read in one explicit transfer (an epoch runs under jax.transfer_guard("disallow")), then
        # added in float32 in batch order: the same rounding as the device sum of the torch side.
        # The last update too (the losses come from the gradients' programs): the epoch, timed to
        # this sync, then ends when its work does.
        jax.block_until_ready(self.state.step)
        total = np.float32(0.0)
        for loss, n in zip(jax.device_get(losses), counts):
            total = total + np.float32(loss) * np.float32(n)
        return total

    def compilations(self) -> int:
        """Programs compiled for the train and eval steps so far: one per input signature (batch
        shape, dtypes, placement) they were called with, which padding to a ladder of lengths
        bounds, and the optimizer update's one."""
        accumulation = accumulated_gradients(self.train_step.gradients, self.accumulate_steps)
        return self.train_step.compilations() + compilations(self.eval_step) + compilations(accumulation)

    # -- the model object and what callbacks use --------------------------------------------
    def sync_model(self) -> None:
        """Writes the trained state into ``self.model`` (copies: the step donates its own)."""
        nnx.update(self.model, *_device_copy((self.state.params, self.state.rest)))

    def snapshot_weights(self) -> dict[str, np.ndarray]:
        # What a checkpoint holds: the parameters and the running statistics (part of state.rest).
        statistics = nnx.filter_state(self.state.rest, weights.STATE)
        return weights.to_numpy(self.model, nnx.merge_state(self.state.params, statistics))

    def restore_weights(self, snapshot: dict[str, np.ndarray]) -> None:
        weights.from_numpy(self.model, snapshot, source="restored weights")
        _, params, rest = functional(self.model)
        self.state = self._committed(self.state._replace(params=_device_copy(params), rest=_device_copy(rest)))

    # -- checkpoints: conversions to and from the canonical arrays --------------------------
    @property
    def optimizer_step(self) -> int:
        return int(self.state.step)

    def _parameter_names(self) -> list[str]:
        return [name for name, _ in weights.canonical_layout(self.model, (nnx.Param,)).values()]

    def _write_model(self, path: Path) -> None:
        self.sync_model()
        versions = {name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "flax", "optax")}
        checkpoint.save_checkpoint(
            path,
            weights.to_numpy(self.model),
            backend="jax",
            model_class=type(self.model).__name__,
            config=getattr(self.model, "config", None),
            versions=versions,
        )

    def _load_weights(self, model_file: Path) -> None:
        arrays, _ = checkpoint.load_checkpoint(model_file)
        weights.from_numpy(self.model, arrays, source=str(model_file))
        self.state = self._initial_state()

    def _params_tree(self, arrays: dict[str, np.ndarray], source: str) -> nnx.State:
        """Canonical arrays shaped like the parameters, as an ``nnx.State`` like ``state.params``."""
        fn, params, rest = functional(self.model)
        scratch = fn.merge(_device_copy(params), rest)  # a copy of the model, written into
        weights.from_numpy(scratch, arrays, source=source, variables=(nnx.Param,))
        return _device_copy(nnx.state(scratch, nnx.Param))


def to_device(batch: Any, device: jax.Device | None = None) -> Any:
    """``batch`` (a pytree of numpy or JAX arrays) on ``device`` (None: the default one); numpy
    int64 becomes int32 and float64 float32, JAX's defaults. See ``torch_impl.training.to_device``."""
    return jax.device_put(batch, device)


def train(
    model: nnx.Module,
    train_loader: Iterable,
    val_loader: Iterable | None,
    optimizer: OptimizerConfig | optax.GradientTransformation,
    num_epochs: int,
    device: str | jax.Device | None = None,
    *,
    batch_transform: BatchTransform | None = None,
    precision: str = "float32",
    accumulate_steps: int = 1,
) -> dict[str, list[float]]:
    """See ``torch_impl.training.train``; the model is updated in place at the end."""
    options = dict(batch_transform=batch_transform, precision=precision, accumulate_steps=accumulate_steps)
    trainer = Trainer(model, optimizer, device=device, **options)
    history = trainer.fit(train_loader, val_loader, num_epochs)
    return {"train_loss": history["train_loss"], "val_loss": history.metrics.get("val_loss", [])}


@jax.jit
def _device_copy(tree: Any) -> Any:
    """A copy of every array of ``tree`` in one dispatch, not one eager ``jnp.copy`` per leaf."""
    return jax.tree.map(jnp.copy, tree)
