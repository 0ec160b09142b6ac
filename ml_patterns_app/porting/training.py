"""Training drift judged against a measured float32 noise floor.

Float32 training is chaotic: two runs that differ only in rounding drift apart, slowly and then
faster. A fixed tolerance over hundreds of steps cannot tell that from a porting bug, so the floor
is measured in the same call: the torch side trains twice from the same weights and batches, the
second time with every weight moved by one ulp (``np.nextafter``, towards +inf or -inf at random per
entry): a change of nothing but rounding. Per step ``t``:

- drift[t] = |loss_nnx - loss_torch| / |loss_torch|, the cross-backend difference;
- floor[t] = max(running max over s <= t of |loss_perturbed - loss_torch| / |loss_torch|,
  LOSS.rtol + LOSS.atol / |loss_torch|).

The running max is the envelope of the divergence so far: the instantaneous difference of two
chaotic runs keeps crossing zero, while how far they have come apart only grows. The second term
is the policy's single-call loss tolerance: two backends may differ by that much on any one
evaluation, so no step is held tighter. The runs agree while drift[t] <= FLOOR_MULTIPLE * floor[t] at
every step. From its first update on, the perturbed run rounds differently at every operation, as
the other backend does; FLOOR_MULTIPLE allows for two algorithms (other reduction orders, fused
kernels) rounding somewhat more differently than one algorithm on inputs one ulp apart. A bug moves
the losses apart by its own size, orders of magnitude above the floor.

What the floor does not absorb: a *systematic* difference, however small, that the training
dynamics amplify. Measured on the example's CNN at lr 3e-2 (an unstable phase from step ~150): torch
float32 and float64 agree to 1e-7 over 300 steps, and so does torch rerun one ulp off, but JAX drifts
to 2e-2. The cause is optax's Adam: it computes the bias correction ``1 - 0.999**t`` in float32,
off by up to 2e-5 relative, where torch computes it in float64. With the correction computed as
``-expm1(t * log(0.999))`` (accurate in float32), or with ``jax_enable_x64``, JAX agrees with torch to
1e-7 over the same 300 steps. The verdict reports such a drift as divergence: the two sides do not
compute the same updates.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

from ml_patterns.parity import LOSS
from ml_patterns_app.porting import inputs as io
from ml_patterns_app.porting.gradients import JaxLoss, TorchLoss, compare_gradients
from ml_patterns_app.porting.report import LayerReport
from ml_patterns_app.porting.rules import Rule
from ml_patterns_app.porting.transfer import transfer_weights

# How far above the measured floor the cross-backend drift may go. Measured (300 Adam steps unless
# noted; worst drift/floor over all steps): correct ports 1.2 (catalogue Transformer, lr 1e-3), 0.65
# (lr 3e-3), 0.57 (lr 1e-2), 0.15 (the example's CNN, lr 1e-3, 200 steps), 1.35 (CNN, lr 1e-2);
# Adam with epsilon inside the square root 17.7, from step 3.
FLOOR_MULTIPLE = 5.0


@dataclasses.dataclass(frozen=True)
class TrainingReport:
    """Per-step losses (float64 copies of float32 values), the drift, the floor and the verdict."""

    torch_losses: np.ndarray
    nnx_losses: np.ndarray
    perturbed_losses: np.ndarray
    drift: np.ndarray
    floor: np.ndarray
    multiple: float
    gradients: LayerReport
    first_bad_step: int | None
    where: str

    @property
    def passed(self) -> bool:
        return self.first_bad_step is None and self.gradients.passed

    @property
    def worst_ratio(self) -> float:
        """max over steps of drift / floor (the verdict needs <= ``multiple``)."""
        return float(np.max(self.drift / self.floor))

    def summary(self) -> str:
        steps = len(self.torch_losses)
        verdict = "agree" if self.passed else "DIVERGE"
        return (
            f"training over {steps} steps: {verdict}. Largest drift/floor {self.worst_ratio:.3g} "
            f"(limit {self.multiple:g}); final losses torch {self.torch_losses[-1]:.7g}, nnx "
            f"{self.nnx_losses[-1]:.7g}, torch one ulp off {self.perturbed_losses[-1]:.7g}; drift "
            f"{self.drift[-1]:.2e}, floor {self.floor[-1]:.2e}.\n{self.where}"
        )

    __str__ = summary

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise AssertionError(self.summary())

    def plot(self, path: str | Path) -> Path:
        """Two panels: losses overlaid; |relative difference| (log) with the floor and its band."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = np.arange(len(self.torch_losses))
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
        top.plot(steps, self.torch_losses, label="torch")
        top.plot(steps, self.nnx_losses, "--", label="nnx")
        top.plot(steps, self.perturbed_losses, ":", label="torch, weights one ulp off")
        top.set_ylabel("loss")
        top.legend(fontsize="small")
        low = 1e-9  # exact agreement (zero) is drawn here, at the bottom of the log axis
        noise = np.abs(self.perturbed_losses - self.torch_losses) / np.abs(self.torch_losses)
        bottom.fill_between(
            steps, low, self.multiple * self.floor, alpha=0.2, label=f"agreement band ({self.multiple:g} x floor)"
        )
        bottom.plot(steps, self.floor, color="gray", label="noise floor (running max, >= loss tolerance)")
        bottom.plot(steps, np.maximum(noise, low), ".", color="gray", ms=2, label="torch vs torch one ulp off")
        bottom.plot(steps, np.maximum(self.drift, low), ".", ms=3, label="|nnx - torch| / |torch|")
        bottom.set_yscale("log")
        bottom.set_ylim(low / 2, None)
        bottom.set_xlabel("step")
        bottom.set_ylabel("relative difference of the loss")
        bottom.legend(fontsize="small", loc="upper left")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
        plt.close(fig)
        return path


def compare_training(
    torch_module: torch.nn.Module,
    nnx_module: nnx.Module,
    torch_optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
    optax_optimizer: optax.GradientTransformation,
    batches: Sequence,
    loss_torch: TorchLoss,
    loss_jax: JaxLoss,
    *,
    nnx_batches: Sequence | None = None,
    transfer: bool = True,
    rules: Sequence[Rule] = (),
    pairs: Mapping[str, str] | None = None,
    multiple: float = FLOOR_MULTIPLE,
    seed: int = 0,
) -> TrainingReport:
    """Trains copies of both modules, one step per batch, and judges the loss drift against the floor.

    Args:
        torch_optimizer: builds the torch optimizer from parameters, e.g.
            ``lambda p: torch.optim.Adam(p, lr=1e-3)``.
        optax_optimizer: the optax twin, e.g. ``optax.adam(1e-3)``.
        batches: one per step (a few hundred), numpy arrays in any nesting; the loss functions get
            them as in ``compare_gradients``. ``nnx_batches`` replaces them on the NNX side.
        transfer: first copy the torch weights into ``nnx_module`` (``transfer_weights``), so that
            both start from the same weights; else they must already be equal.
        multiple: the band, in floors (see the module docstring).
        seed: of the perturbation's signs.

    Neither module trains (copies do); both run in the mode they are in: switch dropout off.
    The gradients at the first batch are compared too, so that a failing run says whether the
    forward, the gradients, or what comes after them (the optimizer) diverged.
    """
    if not batches:
        raise ValueError("compare_training needs at least one batch")
    nnx_batches = batches if nnx_batches is None else nnx_batches
    if len(nnx_batches) != len(batches):
        raise ValueError(f"{len(batches)} torch batches but {len(nnx_batches)} nnx batches")
    if transfer:
        transfer_weights(torch_module, nnx_module, rules=rules, pairs=pairs)
    gradients = compare_gradients(
        torch_module, nnx_module, batches[0], loss_torch, loss_jax, nnx_batch=nnx_batches[0], rules=rules, pairs=pairs
    )
    torch_losses = _train_torch(torch_module, torch_optimizer, batches, loss_torch, None)
    perturbed = _train_torch(torch_module, torch_optimizer, batches, loss_torch, seed)
    nnx_losses = _train_nnx(nnx_module, optax_optimizer, nnx_batches, loss_jax)
    drift, floor = drift_and_floor(torch_losses, nnx_losses, perturbed)
    bad = np.flatnonzero(~(drift <= multiple * floor))  # NaN drift is bad too
    first_bad = int(bad[0]) if bad.size else None
    where = _where(gradients, first_bad, drift, floor, multiple)
    return TrainingReport(torch_losses, nnx_losses, perturbed, drift, floor, multiple, gradients, first_bad, where)


def drift_and_floor(torch_losses, nnx_losses, perturbed_losses) -> tuple[np.ndarray, np.ndarray]:
    """(drift, floor) per step, as defined in the module docstring (float64 arrays)."""
    reference = np.abs(np.asarray(torch_losses, np.float64))
    drift = np.abs(np.asarray(nnx_losses, np.float64) - torch_losses) / reference
    noise = np.maximum.accumulate(np.abs(np.asarray(perturbed_losses, np.float64) - torch_losses) / reference)
    return drift, np.maximum(noise, LOSS.rtol + LOSS.atol / reference)


def nudge(module: torch.nn.Module, seed: int) -> None:
    """Moves every floating-point parameter entry by one ulp, up or down at random (in place)."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.is_floating_point():
                values = param.detach().cpu().numpy()
                direction = np.where(rng.random(values.shape) < 0.5, -np.inf, np.inf).astype(values.dtype)
                param.copy_(torch.from_numpy(np.nextafter(values, direction)))


def _train_torch(module, make_optimizer, batches, loss_fn, perturb_seed) -> np.ndarray:
    model = copy.deepcopy(module)
    if perturb_seed is not None:
        nudge(model, perturb_seed)
    optimizer = make_optimizer(model.parameters())
    losses = []
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, io.to_torch(batch))
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())  # no .item() per step: one sync at the end
    return torch.stack(losses).numpy().astype(np.float64)


def _train_nnx(module, tx, batches, loss_fn) -> np.ndarray:
    graphdef, state = nnx.split(module)
    opt_state = tx.init(nnx.state(module, nnx.Param))

    @jax.jit
    def step(state, opt_state, batch):  # pure: a fresh module from the state, its new state out
        model = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(lambda m: loss_fn(m, batch))(model)  # BatchNorm statistics update too
        params = nnx.state(model, nnx.Param)
        updates, opt_state = tx.update(grads, opt_state, params)
        nnx.update(model, optax.apply_updates(params, updates))
        return nnx.state(model), opt_state, loss

    losses = []
    for batch in batches:
        state, opt_state, loss = step(state, opt_state, io.to_jax(batch))
        losses.append(loss)
    return np.asarray(jnp.stack(losses), np.float64)


def _where(gradients: LayerReport, first_bad, drift, floor, multiple) -> str:
    if not gradients.passed:
        return f"Before any update: {gradients.where}"
    if first_bad is None:
        return "Loss and gradients agree before the first update, and the drift stays within the band."
    return (
        f"Loss and gradients agree before the first update, but from step {first_bad} the drift "
        f"({drift[first_bad]:.2e}) exceeds {multiple:g} x the floor ({floor[first_bad]:.2e}): the optimizer "
        "(or other per-step state: learning-rate schedule, BatchNorm statistics, dropout)."
    )
