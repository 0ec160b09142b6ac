"""The JAX trainer's optimizer state in a full training checkpoint (``ml_patterns.training_resume``):
an ``OptimizerConfig``'s canonical slots (optax's moments renamed and laid out as torch's), or an
``optax.GradientTransformation``'s own state leaves. See ``torch_impl.training_state``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_impl import state as weights
from jax_impl.optim import find_states, map_states
from ml_patterns.training_checkpoint import OPTIMIZER_SLOTS

# optax state field holding each canonical slot: (state type, field)
_SLOT_FIELDS = {
    "exp_avg": (optax.ScaleByAdamState, "mu"),
    "exp_avg_sq": (optax.ScaleByAdamState, "nu"),
    "momentum_buffer": (optax.TraceState, "trace"),
}


class OptimizerCheckpoint:
    """The ``ResumableTrainer`` conversions of ``jax_impl.training.Trainer`` (which it is mixed
    into): ``state``, ``optimizer``, ``optimizer_config``, ``model``, ``_committed`` and
    ``_params_tree`` are the trainer's."""

    def _optimizer_arrays(self) -> dict[str, np.ndarray]:
        if self.optimizer_config is None:
            leaves = jax.tree.leaves(self.state.opt_state)
            return {f"opt_state/{i:05d}": np.asarray(jax.device_get(leaf)) for i, leaf in enumerate(leaves)}
        arrays = {}
        for slot in OPTIMIZER_SLOTS[self.optimizer_config.name]:
            state_type, field = _SLOT_FIELDS[slot]
            (found,) = find_states(self.state.opt_state, state_type)
            for name, value in weights.to_numpy(self.model, getattr(found, field)).items():
                arrays[f"{slot}/{name}"] = value
        return arrays

    def _load_optimizer(self, slots: dict[str, dict[str, np.ndarray]], step: int) -> None:
        """Puts the saved slots and step count into a fresh ``optimizer.init`` state."""
        trees = {slot: self._params_tree(values, f"optimizer slot {slot}") for slot, values in slots.items()}

        def restore(node: Any) -> Any:
            updates = {}
            for slot, tree in trees.items():
                state_type, field = _SLOT_FIELDS[slot]
                if isinstance(node, state_type):
                    updates[field] = tree
            if "count" in node._fields:  # ScaleByAdamState, ScaleByScheduleState: the step count
                updates["count"] = jnp.array(step, jnp.int32)  # a buffer of its own: the state is donated
            return node._replace(**updates) if updates else node

        opt_state = map_states(self.optimizer.init(self.state.params), restore)
        self.state = self._committed(self.state._replace(opt_state=opt_state, step=jnp.array(step, jnp.int32)))

    def _framework_optimizer_json(self) -> dict:
        return {"class": "optax.GradientTransformation", "leaves": _leaf_paths(self.state.opt_state)}

    def _check_framework_optimizer(self, arrays: dict[str, np.ndarray], saved: dict, source: str) -> None:
        fresh = self.optimizer.init(self.state.params)
        paths = _leaf_paths(fresh)
        if saved.get("leaves") != paths or len(arrays) != len(paths):
            raise ValueError(
                f"{source}: the optimizer state has leaves {saved.get('leaves')}, this optimizer's are "
                f"{paths}: another optax transformation?"
            )
        for i, (path, leaf) in enumerate(zip(paths, jax.tree.leaves(fresh))):
            saved_leaf = arrays[f"opt_state/{i:05d}"]
            if saved_leaf.shape != leaf.shape or saved_leaf.dtype != leaf.dtype:
                raise ValueError(
                    f"{source}: optimizer state leaf {path} is "
                    f"{saved_leaf.dtype}{list(saved_leaf.shape)}, "
                    f"this optimizer's is {leaf.dtype}{list(leaf.shape)}"
                )

    def _load_framework_optimizer(self, arrays: dict[str, np.ndarray], saved: dict, source: str) -> None:
        treedef = jax.tree.structure(self.state.opt_state)
        leaves = [jnp.asarray(arrays[f"opt_state/{i:05d}"]) for i in range(treedef.num_leaves)]
        opt_state = jax.tree.unflatten(treedef, leaves)
        step = jnp.array(int(saved["step"]), jnp.int32)
        self.state = self._committed(self.state._replace(opt_state=opt_state, step=step))


def _leaf_paths(tree: Any) -> list[str]:
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
