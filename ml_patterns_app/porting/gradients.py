"""Per parameter: the gradient of the same loss on both sides, in the NNX layout."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
import torch
from flax import nnx

from ml_patterns.parity import GRADIENT, LOSS, Tolerance
from ml_patterns_app.porting import inputs as io
from ml_patterns_app.porting.mapping import WeightMap, map_weights
from ml_patterns_app.porting.report import LayerReport, Row, compare_values
from ml_patterns_app.porting.rules import Rule

TorchLoss = Callable[[torch.nn.Module, object], torch.Tensor]
JaxLoss = Callable[[nnx.Module, object], jax.Array]


def compare_gradients(
    torch_module: torch.nn.Module,
    nnx_module: nnx.Module,
    batch,
    loss_torch: TorchLoss,
    loss_jax: JaxLoss,
    *,
    nnx_batch=None,
    weight_map: WeightMap | None = None,
    rules: Sequence[Rule] = (),
    pairs: Mapping[str, str] | None = None,
    ignore: Iterable[str] = (),
    tolerance: Tolerance = GRADIENT,
    reference: bool = True,
) -> LayerReport:
    """Compares the loss and every parameter's gradient; neither module is changed.

    Args:
        batch: numpy (or torch) arrays in any nesting; ``loss_torch(module, batch)`` gets them as
            torch tensors, ``loss_jax(module, batch)`` as JAX arrays (see ``inputs.to_torch``/``to_jax``),
            each returning a scalar. ``nnx_batch`` replaces ``batch`` on the NNX side.
        tolerance: per gradient (default: the policy's); the loss row uses the policy's loss tolerance.
        reference: also differentiate a float64 copy of the torch module (``loss_torch`` must accept
            it), for the bounded fallback.

    Rows follow the modules' definition order. A gradient bug makes the parameters *before* it (nearer
    the input) differ too, so ``first`` is the differing gradient nearest the loss: the last in order.
    Run ``compare_forward`` first; this localizes backward-only bugs (detach, custom gradients).

    Every NNX parameter's gradient must be compared: a mapping with problems raises ``PortingError``,
    and a parameter without a compared gradient (not ignored) fails the report, naming it.
    """
    weight_map = weight_map or map_weights(torch_module, nnx_module, rules=rules, pairs=pairs, ignore=ignore)
    weight_map.raise_if_problems()
    torch_loss, torch_grads = _torch_gradients(torch_module, batch, loss_torch, torch.float32)
    truth_loss, truth = _torch_gradients(torch_module, batch, loss_torch, torch.float64) if reference else (None, {})
    nnx_loss, nnx_grads = _nnx_gradients(nnx_module, io.to_jax(batch if nnx_batch is None else nnx_batch), loss_jax)
    rows = [_row("loss", "loss", "loss", torch_loss, nnx_loss, truth_loss, LOSS)]
    notes: dict[str, list[str]] = {}  # nnx name -> its layer's notes
    for map_row in weight_map.rows:
        names = map_row.torch_names
        if not map_row.ok or not all(name in torch_grads for name in names):
            continue  # buffers (running statistics) have no gradient
        expected = map_row.tensor_map.to_nnx(*(torch_grads[name] for name in names))
        reference_grads = map_row.tensor_map.to_nnx(*(truth[name] for name in names)) if reference else None
        for i, nnx_name in enumerate(map_row.nnx_names):
            if nnx_name not in nnx_grads:
                continue
            label = f"{', '.join(names)} -> {nnx_name}"
            ref = None if reference_grads is None else reference_grads[i]
            rows.append(_row(label, ", ".join(names), nnx_name, expected[i], nnx_grads[nnx_name], ref, tolerance))
            notes[nnx_name] = map_row.pair.notes
    failing = [row for row in rows if not row.passed]
    first = failing[-1] if failing else None
    compared = {row.nnx_name for row in rows[1:]}
    ignored = set(weight_map.ignored)
    missing = [
        name
        for name in nnx_grads
        if name not in compared and not any(name == i or name.startswith(i + ".") for i in ignored)
    ]
    problems = [f"{len(missing)} NNX parameter(s) without a compared gradient: {', '.join(missing)}"] if missing else []
    problems += [] if compared else ["no parameter gradient was compared (only the loss)"]
    scope = f"compared the loss and {len(compared)} of {len(nnx_grads)} NNX parameter gradient(s); {weight_map.scope}"
    where = _where(failing) + "".join(
        f" Layer note for {row.nnx_name}: {note}." for row in failing for note in notes.get(row.nnx_name, [])
    )
    return LayerReport("gradients", tuple(rows), first, where, scope, tuple(problems))


def _torch_gradients(module, batch, loss_fn, dtype) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    model = copy.deepcopy(module).to(dtype)
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, io.to_torch(batch, dtype))
    loss.backward()
    # An unused parameter has no gradient in torch and a zero one in JAX.
    grads = {
        name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().cpu().numpy()
        for name, p in model.named_parameters()
    }
    return loss.detach().cpu().numpy(), grads


def _nnx_gradients(module, batch, loss_fn) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    model = nnx.clone(module)  # a BatchNorm in training mode updates its statistics: on the copy
    loss, grads = nnx.value_and_grad(lambda m: loss_fn(m, batch))(model)
    flat = {
        ".".join(map(str, path)): np.asarray(getattr(v, "get_value", lambda v=v: v)())
        for path, v in nnx.to_flat_state(grads)
    }
    return np.asarray(loss), flat


def _row(label, torch_name, nnx_name, expected, actual, reference, tolerance) -> Row:
    expected, actual = np.asarray(expected), np.asarray(actual)
    max_abs, max_rel, passed, note = compare_values(expected, actual, tolerance, reference)
    what = "loss" if label == "loss" else "gradient"
    return Row(
        label, torch_name, nnx_name, what, expected.shape, actual.shape, max_abs, max_rel, tolerance, passed, note
    )


def _where(failing: list[Row]) -> str:
    if not failing:
        return "The loss and every gradient agree."
    if failing[0].what == "loss":
        return "The losses differ already: run compare_forward to find the layer, or compare the loss functions."
    names = ", ".join(row.nnx_name for row in failing)
    return (
        f"Gradients differ for {names}. Nearest the loss: {failing[-1].label}; if the forward agrees, look at "
        "the backward of the code around it (detach/stop_gradient, custom gradients, in-place ops)."
    )
