import math

import numpy as np
import pytest

from ml_patterns.optim import OptimizerConfig, ScheduleConfig, learning_rate_at

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(name="rmsprop"), "unknown optimizer 'rmsprop'"),
        (dict(name="adamw"), "adamw needs an explicit weight_decay"),  # torch's and optax's defaults differ
        (dict(name="adam_l2"), "adam_l2 needs an explicit weight_decay"),
        (dict(name="adam", weight_decay=0.1), "adam has no weight decay"),
        (dict(name="sgd", learning_rate=0.0), r"learning_rate must be a finite number in \(0, inf\), got 0.0"),
        (dict(name="sgd", learning_rate=-1e-3), r"learning_rate .* got -0.001"),
        (dict(name="sgd", learning_rate=NAN), r"learning_rate .* got nan"),
        (dict(name="adam", learning_rate=INF), r"learning_rate .* got inf"),
        (dict(name="adam", learning_rate="1e-3"), r"learning_rate must be a number in \(0, inf\), got '1e-3'"),
        (dict(name="adamw", weight_decay=-0.01), r"weight_decay must be a finite number in \[0, inf\), got -0.01"),
        (dict(name="adamw", weight_decay=NAN), r"weight_decay .* got nan"),
        (dict(name="sgd", momentum=-0.1), r"momentum must be a finite number in \[0, 1\), got -0.1"),
        (dict(name="sgd", momentum=1.0), r"momentum .* got 1.0"),
        (dict(name="adam", betas=(0.9, 1.0)), r"betas\[1\] must be a finite number in \[0, 1\), got 1.0"),
        (dict(name="adam", betas=(NAN, 0.999)), r"betas\[0\] .* got nan"),
        (dict(name="adam", betas=(0.9,)), r"betas must be a pair"),
        (dict(name="adam", eps=0.0), r"eps must be a finite number in \(0, inf\), got 0.0"),
        (dict(name="adam", eps=-1e-8), r"eps .* got -1e-08"),
        (
            dict(name="sgd", clip_grad_norm=0.0),
            r"clip_grad_norm must be a finite number in \(0, inf\) or None, got 0.0",
        ),
        (dict(name="sgd", clip_grad_norm=INF), r"clip_grad_norm .* got inf"),
        (dict(name="sgd", schedule=(1, 10)), r"schedule must be a ScheduleConfig or None, got tuple"),
    ],
)
def test_bad_optimizer_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**kwargs)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ValueError, match=r"learning_rate .* got nan; eps .* got 0.0"):
        OptimizerConfig("adam", learning_rate=NAN, eps=0.0)


def test_numpy_scalars_are_numbers():
    config = OptimizerConfig("adamw", learning_rate=np.float32(1e-3), weight_decay=np.float64(0.01))
    assert config.learning_rate == pytest.approx(1e-3)
    assert ScheduleConfig(warmup_steps=np.int64(1), total_steps=np.int64(5)).total_steps == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(warmup_steps=10, total_steps=10), r"need 0 <= warmup_steps < total_steps, got 10, 10"),
        (dict(warmup_steps=-1, total_steps=5), r"need 0 <= warmup_steps < total_steps, got -1, 5"),
        (dict(warmup_steps=1.5, total_steps=5), r"warmup_steps must be an integer, got 1.5"),
        (
            dict(warmup_steps=1, total_steps=5, final_fraction=2.0),
            r"final_fraction must be a finite number in \[0, 1\]",
        ),
        (dict(warmup_steps=1, total_steps=5, final_fraction=NAN), r"final_fraction .* got nan"),
    ],
)
def test_bad_schedules(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScheduleConfig(**kwargs)


def test_warmup_cosine_shape():
    config = OptimizerConfig("sgd", learning_rate=1.0, schedule=ScheduleConfig(warmup_steps=4, total_steps=12))
    rates = [learning_rate_at(config, s) for s in range(14)]
    assert rates[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert rates[8] == pytest.approx(0.5)  # halfway through the cosine
    assert rates[12] == rates[13] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))


def test_constant_rate_without_schedule():
    assert learning_rate_at(OptimizerConfig("adam", learning_rate=0.1), 1000) == 0.1
