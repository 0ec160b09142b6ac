"""The JAX trainer's pure steps: ``train_step(state, batch) -> (state, metrics)`` as two jitted
programs (the gradients per batch shape, the optax update once), the evaluation step, and the
gradient accumulation program (``accumulate_steps``). ``jax_impl.training.Trainer`` runs them."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jax_impl import distributed as distributed_
from jax_impl.models import Functional, functional
from jax_impl.optim import build_optimizer
from jax_impl.precision import compute_dtype, matmul_precision
from ml_patterns.optim import OptimizerConfig


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
        self, state: TrainState, batches: Sequence[Any], weights: jax.Array, accumulate_steps: int
    ) -> tuple[TrainState, dict]:
        """One update from a group of micro-batches (``accumulated_gradients``), the optimizer
        (clipping included) applied once, by the update program every group shares."""
        program = accumulated_gradients(self.gradients, accumulate_steps)
        loss, rest, grads = program(state.params, state.rest, tuple(batches), weights, state.step)
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
    """``program(params, rest, batches, weights, step) -> (loss, rest, grads)``, one jitted
    program for a group of micro-batches (compiled once per group signature: the number of
    micro-batches and their shapes).

    ``grads = sum_b weights[b] * grad(loss_b)`` and ``loss = sum_b weights[b] * loss_b`` with
    ``weights[b] = n_b / sum(n)`` (float32 ``[len(batches)]``): the gradient and the loss of one
    batch holding every sample of the group, each sample weighing the same (a short last
    micro-batch counts for its samples, not as a full one; the mean of the micro-batches' means,
    ``optax.MultiSteps``'s rule, would not). Micro-batch ``b`` of update ``step`` draws its dropout
    key from ``step * accumulate_steps + b``: every micro-batch gets masks of its own.
    """
    return _accumulated(gradients, accumulate_steps)


@functools.lru_cache(maxsize=16)
def _accumulated(gradients, accumulate_steps: int):
    def program(params: nnx.State, rest: nnx.State, batches: Sequence[Any], weights: jax.Array, step: jax.Array):
        loss, summed = None, None
        for index, batch in enumerate(batches):
            part, rest, grads = gradients(params, rest, batch, step * accumulate_steps + index)
            weight = weights[index]
            grads = jax.tree.map(lambda g, w=weight: g * w, grads)
            summed = grads if summed is None else jax.tree.map(jnp.add, summed, grads)
            loss = part * weight if loss is None else loss + part * weight
        return loss, rest, summed

    return jax.jit(program, donate_argnums=1)
