"""ml_patterns.verdict: the ensemble floor, the float64 anchor and the predictability horizon, on
made-up loss curves whose answer is known."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from ml_patterns.parity import Tolerance
from ml_patterns.ulps import BF16_ULPS, ulps_off
from ml_patterns.verdict import (
    AGREE,
    CHAOTIC,
    DISAGREE,
    ensemble_floor,
    ensemble_spread,
    global_norm,
    judge,
    predictability_horizon,
)

STEPS = 200
LOSS = 2.0 * np.exp(-np.arange(STEPS) / 80.0) + 0.5  # a decreasing training loss


def rounding_noise(seed: int, size: float = 3e-7, growth: float = 0.0) -> np.ndarray:
    """A relative perturbation as rounding gives: a random walk of ulp-sized steps, times exp(growth t)
    until it reaches 1e-2 (a chaotic run's losses wander, but within the loss landscape's range)."""
    walk = np.cumsum(np.random.default_rng(seed).normal(size=STEPS)) / np.sqrt(np.arange(1, STEPS + 1))
    return size * walk * np.minimum(np.exp(growth * np.arange(STEPS)), 1e-2 / size)


def family(growth: float = 0.0, runs: int = 3):
    """(reference, ensemble [runs, T]) that differ by rounding noise alone."""
    ensemble = np.stack([LOSS * (1 + rounding_noise(10 + k, growth=growth)) for k in range(runs)])
    return LOSS.copy(), ensemble


def test_the_floor_is_the_running_max_of_the_largest_rerun_and_at_least_the_tolerance():
    reference = np.array([1.0, 1.0, 1.0, 1.0])
    ensemble = np.array([[1.0, 1.0 + 4e-6, 1.0, 1.0], [1.0, 1.0, 1.0 - 1e-5, 1.0]])
    floor = ensemble_floor(reference, ensemble, Tolerance(rtol=1e-6, atol=1e-6))
    np.testing.assert_allclose(floor, [2e-6, 4e-6, 1e-5, 1e-5])


def test_the_horizon_is_where_the_spread_first_exceeds_the_level():
    reference = np.ones(5)
    ensemble = np.array([[1.0, 1.0, 1.0005, 1.002, 1.0], [1.0, 1.0, 1.0, 0.999, 1.0]])
    spread = ensemble_spread(reference, ensemble)
    np.testing.assert_allclose(spread, [0, 0, 5e-4, 3e-3, 0], atol=1e-12)
    assert predictability_horizon(spread, 1e-3) == 3
    assert predictability_horizon(spread, 1e-2) is None


def test_another_implementation_rounding_differently_agrees_by_the_floor():
    reference, ensemble = family()
    verdict = judge(reference, LOSS * (1 + rounding_noise(99)), ensemble)
    assert verdict.outcome == AGREE and verdict.passed, verdict.summary()
    assert verdict.decided == "ensemble floor"
    assert verdict.horizon is None and verdict.worst_floor_ratio < 5


@pytest.mark.parametrize("size", [1e-3, 1e-5])
def test_a_systematic_difference_disagrees_from_its_first_step(size):
    reference, ensemble = family()
    anchor = LOSS * (1 + 1e-7)
    verdict = judge(reference, LOSS * (1 + size), ensemble, anchor)
    assert verdict.outcome == DISAGREE and not verdict.passed
    assert verdict.first_outside == 0 and verdict.worst_floor_ratio > 5 and verdict.worst_accuracy_ratio > 2


def test_the_float64_anchor_accepts_a_side_closer_to_the_truth_than_the_reference():
    # Every float32 run of the reference is 1e-5 off the float64 truth; the other side is on it: its
    # drift is far outside the floor, and it is the more accurate.
    truth = LOSS
    reference, ensemble = family()
    reference, ensemble = reference * (1 + 1e-5), ensemble * (1 + 1e-5)
    other = truth * (1 + rounding_noise(7))
    verdict = judge(reference, other, ensemble, truth)
    assert verdict.outcome == AGREE, verdict.summary()
    assert verdict.decided == "float64 anchor"
    assert verdict.worst_floor_ratio > 5 and verdict.worst_accuracy_ratio <= 2
    assert judge(reference, other, ensemble).outcome == DISAGREE, "without the anchor the floor alone decides"


def test_a_side_within_the_floor_agrees_by_the_floor_even_further_from_the_truth():
    # Either test suffices: within the spread of runs that differ only by rounding, a difference is
    # not told apart from rounding (the detection limit: e.g. a weight decay 1% off over 63 steps,
    # docs/PARITY.md). Torch 1e-5 below the truth, its reruns 1e-5 above: the floor is 2e-5; the
    # other side 3.5e-5 above: 2.25 floors, 3.5x torch's float64 error.
    truth = LOSS
    reference = LOSS * (1 - 1e-5)
    _, ensemble = family()
    ensemble = ensemble * (1 + 1e-5)
    verdict = judge(reference, truth * (1 + 3.5e-5), ensemble, truth)
    assert verdict.outcome == AGREE and verdict.decided == "ensemble floor", verdict.summary()
    assert verdict.worst_floor_ratio < 3 < verdict.worst_accuracy_ratio
    assert judge(reference, truth * (1 + 1e-4), ensemble, truth).outcome == DISAGREE, "outside both"


def test_the_float64_anchor_refuses_a_side_further_from_the_truth():
    truth = LOSS
    reference, ensemble = family()
    other = truth * (1 + 1e-5)  # the reference's runs are 3e-7 off the truth, this side 1e-5
    verdict = judge(reference, other, ensemble, truth)
    assert verdict.outcome == DISAGREE and verdict.worst_accuracy_ratio > 2


def chaotic_family(runs: int = 3):
    """Rounding noise that grows 10% a step: the spread passes 1e-3 near step 85."""
    return family(growth=0.1, runs=runs)


def test_a_chaotic_run_reports_its_horizon_and_agrees_in_distribution():
    reference, ensemble = chaotic_family()
    other = LOSS * (1 + rounding_noise(42, growth=0.1))
    verdict = judge(reference, other, ensemble)
    assert verdict.outcome == CHAOTIC and verdict.passed, verdict.summary()
    assert 40 < verdict.horizon < 150
    assert f"chaotic from step {verdict.horizon}" in verdict.summary()


def test_a_bug_in_a_chaotic_run_is_still_reported():
    reference, ensemble = chaotic_family()
    buggy = LOSS * (1 + 1e-4) * (1 + rounding_noise(42, growth=0.1))
    verdict = judge(reference, buggy, ensemble)
    assert verdict.outcome == DISAGREE and verdict.first_outside == 0
    assert verdict.horizon is not None


def test_after_the_horizon_a_loss_outside_the_ensemble_disagrees():
    reference, ensemble = chaotic_family()
    other = LOSS * (1 + rounding_noise(42, growth=0.1))
    horizon = judge(reference, other, ensemble).horizon
    other[horizon + 20 :] *= 1.5  # e.g. a learning rate that differs once the schedule reaches it
    verdict = judge(reference, other, ensemble)
    assert verdict.outcome == DISAGREE and verdict.decided == "distributions after the horizon"
    assert verdict.first_outside == horizon + 20


def test_after_the_horizon_a_few_stray_steps_are_the_distribution_not_a_disagreement():
    # Past the horizon a correct run's loss strays now and then far outside the few reruns' range (a
    # rerun against the others does too: docs/PARITY.md); the typical step decides.
    reference, ensemble = chaotic_family()
    other = LOSS * (1 + rounding_noise(42, growth=0.1))
    horizon = judge(reference, other, ensemble).horizon
    other[[horizon + 5, horizon + 30]] *= 1.2
    verdict = judge(reference, other, ensemble)
    assert verdict.outcome == CHAOTIC, verdict.summary()


def test_after_the_horizon_final_metrics_outside_their_spread_disagree():
    reference, ensemble = chaotic_family()
    other = LOSS * (1 + rounding_noise(42, growth=0.1))
    inside = {"MAE logP": (0.51, 0.515, [0.50, 0.52, 0.505])}
    assert judge(reference, other, ensemble, metrics=inside).outcome == CHAOTIC
    outside = {"MAE logP": (0.51, 0.9, [0.50, 0.52, 0.505])}
    verdict = judge(reference, other, ensemble, metrics=outside)
    assert verdict.outcome == DISAGREE and "MAE logP" in verdict.reason


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no steps", "no steps were compared"),
        ("two reruns", "2 one-ulp reruns where 3 were asked"),
        ("nan reference", "reference run's losses are not all finite"),
        ("nan anchor", "anchor run's losses are not all finite"),
    ],
)
def test_a_check_that_measured_nothing_fails(case, message):
    reference, ensemble = family()
    other, anchor = LOSS.copy(), LOSS.copy()
    if case == "no steps":
        reference, other, ensemble, anchor = [], [], [], None
    elif case == "two reruns":
        ensemble = ensemble[:2]
    elif case == "nan reference":
        reference[5] = np.nan
    else:
        anchor[5] = np.nan
    verdict = judge(reference, other, ensemble, anchor)
    assert verdict.outcome == DISAGREE and not verdict.passed
    assert verdict.decided == "input checks" and message in verdict.reason


def test_a_nan_on_the_other_side_disagrees_at_its_step():
    reference, ensemble = family()
    other = LOSS.copy()
    other[17] = np.nan
    verdict = judge(reference, other, ensemble, LOSS)
    assert verdict.outcome == DISAGREE and verdict.first_outside == 17


def test_runs_of_different_lengths_are_a_callers_bug():
    reference, ensemble = family()
    with pytest.raises(ValueError, match="step for step"):
        judge(reference, LOSS[:-1], ensemble)
    with pytest.raises(ValueError, match="step for step"):
        judge(reference, LOSS, ensemble[:, :-1])


def test_an_ensemble_run_moves_every_weight_one_ulp_after_every_step():
    # compare's and compare_training's ensemble (torch_impl.runtime.rounding_noise): one ulp at
    # random after each optimizer step, reproducible from its seed, different across seeds.
    torch = pytest.importorskip("torch")
    from ml_patterns.callbacks import Callback
    from torch_impl.runtime import rounding_noise

    class Trainer:
        def __init__(self):
            torch.manual_seed(0)
            self.model = torch.nn.Linear(8, 4)

    def run(seed: int, steps: int = 3) -> list[np.ndarray]:
        trainer, noise = Trainer(), rounding_noise(seed)
        assert isinstance(noise, Callback)
        trajectory = [trainer.model.weight.detach().numpy().copy()]
        for step in range(steps):
            noise.on_batch_end(step, trainer, None)
            trajectory.append(trainer.model.weight.detach().numpy().copy())
        return trajectory

    trajectory = run(seed=1)
    for before, after in zip(trajectory, trajectory[1:]):
        moved = after.view(np.int32).astype(np.int64) - before.view(np.int32).astype(np.int64)
        assert np.all(np.abs(moved) == 1), "every entry moves by exactly one ulp"
        assert 0 < np.mean(moved > 0) < 1, "up and down at random"
    np.testing.assert_array_equal(run(seed=1)[-1], trajectory[-1])
    assert not np.array_equal(run(seed=2)[-1], trajectory[-1])


def test_the_global_norm_is_over_every_floating_point_array_in_float64():
    arrays = {"w": np.array([[3.0, 0.0]], np.float32), "b": np.array([4.0], np.float32), "step": np.array([7])}
    assert global_norm(arrays) == 5.0


NORM = 120.0  # a model's global weight norm, at 3 epochs' ends


def norms(other_bias: float, reference_error: float = 2e-7) -> dict:
    """The float64 run's norms; torch and its reruns ``reference_error`` off them (rounding), the
    other side ``other_bias`` off (a biased update, e.g. a weight decay 1% off, pulls one way)."""
    anchor = NORM * np.array([1.0, 0.99, 0.98])
    rng = np.random.default_rng(3)
    family = anchor * (1 + reference_error * rng.choice([-1, 1], size=(4, 3)))
    return {"anchor": anchor, "reference": family[0], "ensemble": family[1:], "other": anchor * (1 + other_bias)}


def test_the_weight_norm_test_passes_a_side_that_rounds_differently_and_reports_its_ratio():
    reference, ensemble = family()
    verdict = judge(reference, LOSS * (1 + rounding_noise(99)), ensemble, LOSS, norms=norms(3e-7))
    assert verdict.outcome == AGREE, verdict.summary()
    assert verdict.worst_norm_ratio == pytest.approx(1.5) and "weight norm's float64 error" in verdict.reason


def test_a_biased_weight_norm_disagrees_though_the_losses_agree():
    # The losses within the floor (the weight decay 1% off of docs/PARITY.md), the norm 1e-6 off
    # float64's where every torch run is 2e-7 off it.
    reference, ensemble = family()
    other = LOSS * (1 + rounding_noise(99))
    verdict = judge(reference, other, ensemble, LOSS, norms=norms(-1e-6))
    assert verdict.outcome == DISAGREE and not verdict.passed
    assert verdict.decided == "weight norm against float64" and verdict.worst_norm_ratio == pytest.approx(5, rel=1e-3)
    assert "though the losses agree" in verdict.reason


def test_the_norm_error_is_held_to_at_least_float32s_resolution():
    # torch's norm on float64's by chance: the other side's 2e-7 is 1.7 x float32's epsilon, not infinitely worse.
    reference, ensemble = family()
    verdict = judge(reference, LOSS.copy(), ensemble, LOSS, norms=norms(2e-7, reference_error=0.0))
    assert verdict.outcome == AGREE and verdict.worst_norm_ratio == pytest.approx(2e-7 / np.finfo(np.float32).eps)


def test_a_loss_disagreement_keeps_its_verdict_and_still_reports_the_norm_ratio():
    reference, ensemble = family()
    verdict = judge(reference, LOSS * (1 + 1e-3), ensemble, LOSS, norms=norms(-1e-6))
    assert verdict.outcome == DISAGREE and verdict.decided == "ensemble floor and float64 anchor"
    assert verdict.worst_norm_ratio == pytest.approx(5, rel=1e-3)


@pytest.mark.parametrize("lost", ["other", "ensemble"])
def test_weight_norms_asked_for_but_not_measured_fail(lost):
    reference, ensemble = family()
    given = {**norms(0.0), lost: []}
    verdict = judge(reference, LOSS * (1 + rounding_noise(99)), ensemble, LOSS, norms=given)
    assert verdict.outcome == DISAGREE and verdict.decided == "input checks" and lost in verdict.reason


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_ulp_moves_each_entry_to_its_float_neighbour_across_zero_and_powers_of_two(dtype):
    values = np.array([0.0, -0.0, 1.0, -1.0, 0.5, 3.7, -2e-3, 1e-41], dtype)
    moved = ulps_off(values, np.random.default_rng(1))
    up, down = np.nextafter(values, dtype(np.inf)), np.nextafter(values, dtype(-np.inf))
    assert moved.dtype == dtype
    assert np.all((moved == up) | (moved == down)) and not np.any(moved == values)
    # the same draw as np.nextafter toward -inf where the uniform draw is below 0.5
    toward = np.where(np.random.default_rng(1).random(values.shape) < 0.5, -np.inf, np.inf).astype(dtype)
    assert np.array_equal(moved, np.nextafter(values, toward))


def test_one_bfloat16_ulp_moves_a_float32_weight_to_the_neighbouring_bfloat16_value():
    # Weights that are bfloat16 values land on the neighbouring bfloat16 value: one bfloat16 ulp
    # (2^-7 of 1.0 upward, 2^-8 of it downward, across the power of two), whatever the binade.
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=500) * 10.0 ** rng.integers(-6, 4, 500), [1.0, -1.0, 0.0]])
    values = values.astype(ml_dtypes.bfloat16).astype(np.float32)
    moved = ulps_off(values, np.random.default_rng(2), BF16_ULPS)
    as_bf16 = values.astype(ml_dtypes.bfloat16)
    up = np.nextafter(as_bf16, np.full_like(as_bf16, np.inf)).astype(np.float32)
    down = np.nextafter(as_bf16, np.full_like(as_bf16, -np.inf)).astype(np.float32)
    assert BF16_ULPS == 2**16 and moved.dtype == np.float32
    assert np.all((moved == up) | (moved == down)) and np.any(moved == up) and np.any(moved == down)
    assert np.isin(ulps_off(np.array([1.0], np.float32), np.random.default_rng(0), BF16_ULPS), [1 + 2**-7, 1 - 2**-8])


def test_a_move_keeps_finite_values_finite_and_refuses_other_dtypes():
    largest = np.finfo(np.float32).max
    moved = ulps_off(np.array([largest, -largest], np.float32), np.random.default_rng(0), BF16_ULPS)
    assert np.all(np.isfinite(moved))
    with pytest.raises(TypeError, match="float16"):
        ulps_off(np.ones(2, np.float16), np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 1"):
        ulps_off(np.ones(2, np.float32), np.random.default_rng(0), 0)
