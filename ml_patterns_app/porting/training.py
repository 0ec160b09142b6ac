"""Training drift judged against the measured float32 noise (the tests: ``ml_patterns.verdict``).

``compare_training`` trains copies of both modules from one set of weights on one batch order, the
torch module again ``runs`` times with one ulp of rounding noise a step (the ensemble floor), and
once in float64 (the anchor); the verdict is ``ml_patterns.verdict.judge``'s.
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

from ml_patterns import verdict as noise
from ml_patterns.verdict import FLOOR_MULTIPLE, Verdict
from ml_patterns_app.figures import drift_figure
from ml_patterns_app.porting import inputs as io
from ml_patterns_app.porting.gradients import JaxLoss, TorchLoss, compare_gradients
from ml_patterns_app.porting.report import LayerReport
from ml_patterns_app.porting.rules import Rule
from ml_patterns_app.porting.transfer import transfer_weights
from torch_impl.state import float64_twin, one_ulp_off


@dataclasses.dataclass(frozen=True)
class TrainingReport:
    """Per-step losses (float64 copies): torch's and nnx's ``[T]``, the ensemble's ``[K, T]`` (torch
    with one ulp of noise a step), the float64 anchor's ``[T]``; the verdict and the first-batch gradients."""

    torch_losses: np.ndarray
    nnx_losses: np.ndarray
    ensemble_losses: np.ndarray
    float64_losses: np.ndarray
    verdict: Verdict
    gradients: LayerReport
    where: str

    @property
    def passed(self) -> bool:
        return self.verdict.passed and self.gradients.passed

    @property
    def first_bad_step(self) -> int | None:
        return self.verdict.first_outside

    @property
    def worst_ratio(self) -> float:
        """max over the steps before any horizon of drift / ensemble floor."""
        return self.verdict.worst_floor_ratio

    def summary(self) -> str:
        steps = len(self.torch_losses)
        verdict = self.verdict.summary() if self.gradients.passed else "DIVERGE before the first update"
        return (
            f"training over {steps} steps: {verdict}. Final losses torch {self.torch_losses[-1]:.7g}, nnx "
            f"{self.nnx_losses[-1]:.7g}, torch in float64 {self.float64_losses[-1]:.7g}; drift "
            f"{self.verdict.drift[-1]:.2e}, floor {self.verdict.floor[-1]:.2e}.\n{self.where}"
        )

    __str__ = summary

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise AssertionError(self.summary())

    def plot(self, path: str | Path) -> Path:
        """Two panels: losses overlaid; |relative difference| (log) with the floor and its band."""
        path = Path(path)
        drift_figure(self.torch_losses, self.nnx_losses, self.ensemble_losses, self.verdict).savefig(path)
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
    runs: int = noise.ENSEMBLE_SIZE,
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
        multiple: the band, in floors (``ml_patterns.verdict``).
        runs: the torch reruns with one ulp of noise a step (K >= 3: the floor is the largest of K draws).
        seed: of the first rerun's perturbation signs (the k-th uses ``seed + k``).

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
    torch_losses, torch_norm = _train_torch(torch_module, torch_optimizer, batches, loss_torch)
    reruns = [_train_torch(torch_module, torch_optimizer, batches, loss_torch, seed + k) for k in range(runs)]
    ensemble = np.stack([losses for losses, _ in reruns])
    anchor, anchor_norm = _train_torch(
        float64_twin(torch_module), torch_optimizer, batches, loss_torch, float_dtype=torch.float64
    )
    nnx_losses, nnx_norm = _train_nnx(nnx_module, optax_optimizer, nnx_batches, loss_jax)
    # the final weights' global norms: the verdict's norm test
    norms = {
        "reference": [torch_norm],
        "other": [nnx_norm],
        "anchor": [anchor_norm],
        "ensemble": [[n] for _, n in reruns],
    }
    verdict = noise.judge(torch_losses, nnx_losses, ensemble, anchor, norms=norms, runs=runs, multiple=multiple)
    return TrainingReport(torch_losses, nnx_losses, ensemble, anchor, verdict, gradients, _where(gradients, verdict))


def _train_torch(
    module, make_optimizer, batches, loss_fn, perturb_seed: int | None = None, float_dtype=torch.float32
) -> tuple[np.ndarray, float]:
    """Per-step losses ``[T]`` and the final parameters' global norm of a copy of ``module``, the
    batches' floating-point arrays as ``float_dtype``
    (float64 for the anchor). With ``perturb_seed``, a run of the ensemble: its weights moved one ulp
    at random before the first step and after every step (``torch_impl.state.one_ulp_off``)."""
    model = copy.deepcopy(module)
    generator = None if perturb_seed is None else torch.Generator().manual_seed(perturb_seed)
    if generator is not None:
        one_ulp_off(model, generator)
    optimizer = make_optimizer(model.parameters())
    losses = []
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, io.to_torch(batch, float_dtype))
        loss.backward()
        optimizer.step()
        if generator is not None:
            one_ulp_off(model, generator)
        losses.append(loss.detach())  # no .item() per step: one sync at the end
    norm = noise.global_norm({name: p.detach().cpu().numpy() for name, p in model.named_parameters()})
    return torch.stack(losses).detach().cpu().numpy().astype(np.float64), norm


def _train_nnx(module, tx, batches, loss_fn) -> tuple[np.ndarray, float]:
    """Per-step losses ``[T]`` and the final parameters' global norm of ``module`` trained by ``tx``."""
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
    params = nnx.state(nnx.merge(graphdef, state), nnx.Param)
    norm = noise.global_norm(dict(enumerate(jax.device_get(jax.tree.leaves(params)))))
    return np.asarray(jnp.stack(losses), np.float64), norm


def _where(gradients: LayerReport, verdict: Verdict) -> str:
    if not gradients.passed:
        return f"Before any update: {gradients.where}"
    if verdict.passed:
        return f"Loss and gradients agree before the first update; the training: {verdict.summary()}."
    if verdict.first_outside is None:  # e.g. final metrics outside the ensemble's spread, or nothing measured
        return f"Loss and gradients agree before the first update, but: {verdict.reason}."
    return (
        f"Loss and gradients agree before the first update, but {verdict.reason}: the optimizer (or other "
        "per-step state: learning-rate schedule, BatchNorm statistics, dropout)."
    )
