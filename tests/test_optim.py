import pytest

from ml_patterns.optim import OptimizerConfig, ScheduleConfig, learning_rate_at


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(name="rmsprop"), "unknown optimizer 'rmsprop'"),
    (dict(name="adamw"), "adamw needs an explicit weight_decay"),  # torch's and optax's defaults differ
    (dict(name="adam_l2"), "adam_l2 needs an explicit weight_decay"),
    (dict(name="adam", weight_decay=0.1), "adam has no weight decay"),
    (dict(name="sgd", learning_rate=0.0), "learning_rate must be positive"),
    (dict(name="sgd", clip_grad_norm=0.0), "clip_grad_norm must be positive"),
])
def test_bad_optimizer_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(warmup_steps=10, total_steps=10), dict(warmup_steps=-1, total_steps=5)])
def test_bad_schedule_lengths(kwargs):
    with pytest.raises(ValueError, match="need 0 <= warmup_steps < total_steps"):
        ScheduleConfig(**kwargs)


def test_bad_schedule_final_fraction():
    with pytest.raises(ValueError, match=r"final_fraction must lie in \[0, 1\]"):
        ScheduleConfig(warmup_steps=1, total_steps=5, final_fraction=2.0)


def test_warmup_cosine_shape():
    config = OptimizerConfig("sgd", learning_rate=1.0, schedule=ScheduleConfig(warmup_steps=4, total_steps=12))
    rates = [learning_rate_at(config, s) for s in range(14)]
    assert rates[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert rates[8] == pytest.approx(0.5)  # halfway through the cosine
    assert rates[12] == rates[13] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))


def test_constant_rate_without_schedule():
    assert learning_rate_at(OptimizerConfig("adam", learning_rate=0.1), 1000) == 0.1
