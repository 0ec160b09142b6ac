"""The hyperparameters of a torch Adam/AdamW and of an optax Adam chain, read and compared.

optax keeps its hyperparameters in the closures of its transformations (``scale_by_adam``'s ``b1``,
``b2``, ``eps``, ``eps_root``; ``add_decayed_weights``' ``weight_decay``; ``scale``'s ``step_size``,
minus the learning rate), so they are read from there; what cannot be read (a schedule, another
transformation) is left out, and nothing is said about it.
"""

from __future__ import annotations

import inspect

import torch


def torch_settings(optimizer: torch.optim.Optimizer) -> dict:
    """An Adam or AdamW's settings (empty for other optimizers)."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return {}
    group = optimizer.defaults
    decoupled = isinstance(optimizer, torch.optim.AdamW) or bool(group.get("decoupled_weight_decay"))
    return {
        "lr": group["lr"],
        "b1": group["betas"][0],
        "b2": group["betas"][1],
        "eps": group["eps"],
        "weight_decay": group["weight_decay"],
        "decoupled": decoupled,
        "amsgrad": group["amsgrad"],
    }


def optax_settings(tx) -> dict:
    """An optax chain's Adam settings, in the same keys (empty when it holds no ``scale_by_adam``)."""
    found: dict = {}
    for name, values in _transformations(tx.update):
        if name == "scale_by_adam":
            found |= {k: values[k] for k in ("b1", "b2", "eps", "eps_root") if k in values}
        elif name == "add_decayed_weights":
            found["weight_decay"] = values.get("weight_decay", 0.0)
            found["decoupled"] = "b1" in found  # decay after the Adam scaling: decoupled, as AdamW
        elif name == "scale" and isinstance(values.get("step_size"), (int, float)):
            found["lr"] = -values["step_size"]
    if "b1" not in found:
        return {}
    return {"weight_decay": 0.0, "decoupled": True, "eps_root": 0.0, **found}


def differences(torch_optimizer: torch.optim.Optimizer, tx) -> tuple[list[str], str]:
    """(``["weight decay: torch 0.01 vs optax 0.0001", ...]``, the optax call that matches torch),
    or ([], "") when either side cannot be read."""
    ours, theirs = torch_settings(torch_optimizer), optax_settings(tx)
    if not ours or not theirs:
        return [], ""
    found = []
    for key, label in (("lr", "learning rate"), ("b1", "b1 (betas[0])"), ("b2", "b2 (betas[1])"), ("eps", "eps")):
        if key in theirs and not _close(ours[key], theirs[key]):
            found.append(f"{label}: torch {ours[key]:g} vs optax {theirs[key]:g}")
    if theirs["eps_root"]:
        found.append(
            f"optax eps_root {theirs['eps_root']:g} puts epsilon inside the square root; torch adds eps outside"
        )
    decay_t, decay_o = ours["weight_decay"], theirs["weight_decay"]
    if not _close(decay_t, decay_o):
        found.append(f"weight decay: torch {decay_t:g} vs optax {decay_o:g}")
    elif decay_t and ours["decoupled"] != theirs["decoupled"]:
        coupled = "torch" if not ours["decoupled"] else "optax"
        found.append(f"weight decay: {coupled} adds it to the gradient (L2), the other decays the weights (AdamW)")
    if ours["amsgrad"]:
        found.append("torch amsgrad=True: optax.amsgrad")
    return found, _optax_call(ours) if found else ""


def _optax_call(settings: dict) -> str:
    args = f"learning_rate={settings['lr']:g}, b1={settings['b1']:g}, b2={settings['b2']:g}, eps={settings['eps']:g}"
    if not settings["weight_decay"]:
        return f"optax.adam({args})"
    if settings["decoupled"]:
        return f"optax.adamw({args}, weight_decay={settings['weight_decay']:g})"
    return f"optax.chain(optax.add_decayed_weights({settings['weight_decay']:g}), optax.adam({args}))"


def _close(a, b) -> bool:
    return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(a)))


def _transformations(update, depth: int = 0):
    """(transformation name, closure values) for every transformation under ``update``, in chain order."""
    if depth > 8 or not callable(update):
        return
    try:
        values = inspect.getclosurevars(update).nonlocals
    except (TypeError, ValueError):
        return
    yield update.__qualname__.split(".<locals>")[0], values
    for value in values.values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            inner = getattr(item, "update", item)
            if callable(inner) and inner is not update and getattr(inner, "__closure__", None):
                yield from _transformations(inner, depth + 1)
