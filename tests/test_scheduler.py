"""A ``torch.optim.lr_scheduler`` given to the torch Trainer: stepped per epoch or per optimizer
update, and checkpointed so that a resumed run is the uninterrupted one, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torch_impl.training
from ml_patterns.callbacks import Callback
from ml_patterns.optim import OptimizerConfig
from tests.test_training import regression_batches, regressor

EPOCHS = 4


def parts(kind):
    """A fresh model, its AdamW, a scheduler of ``kind`` and the interval it is meant for."""
    model = regressor("torch")
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    lr = torch.optim.lr_scheduler
    if kind == "step":  # per update: 3 batches an epoch
        return model, optimizer, lr.OneCycleLR(optimizer, max_lr=0.1, total_steps=3 * EPOCHS), "step"
    if kind == "plateau":
        return model, optimizer, lr.ReduceLROnPlateau(optimizer, factor=0.5, patience=0), "epoch"
    return model, optimizer, lr.StepLR(optimizer, step_size=1, gamma=0.5), "epoch"


def trainer_for(kind, accumulate_steps=1):
    model, optimizer, scheduler, interval = parts(kind)
    return torch_impl.training.Trainer(
        model, optimizer, scheduler=scheduler, scheduler_interval=interval, accumulate_steps=accumulate_steps
    )


def fit(trainer, epochs=EPOCHS):
    return trainer.fit(regression_batches(), regression_batches((8, 8)), num_epochs=epochs)


class LearningRates(Callback):
    def __init__(self):
        self.seen = []

    def on_epoch_end(self, epoch, trainer, metrics):
        self.seen.append(trainer.optimizer.param_groups[0]["lr"])


def test_an_epoch_scheduler_steps_once_an_epoch_and_a_step_scheduler_once_an_update():
    epochly, rates = trainer_for("epoch"), LearningRates()
    epochly.callbacks.append(rates)
    fit(epochly)
    seen = rates.seen
    assert seen == pytest.approx([0.025, 0.0125, 0.00625, 0.003125])
    assert epochly.scheduler.last_epoch == EPOCHS
    stepwise = trainer_for("step")
    fit(stepwise)
    assert stepwise.scheduler.last_epoch == stepwise.optimizer_step == 3 * EPOCHS
    accumulated = trainer_for("step", accumulate_steps=2)  # 3 batches: updates of 2 and 1
    fit(accumulated, 2)
    assert accumulated.scheduler.last_epoch == accumulated.optimizer_step == 2 * 2


@pytest.mark.parametrize("kind", ["epoch", "step", "plateau"])
def test_resume_with_a_scheduler_is_bit_exact(kind, tmp_path):
    whole = trainer_for(kind)
    reference = fit(whole).as_dict()
    first = trainer_for(kind)
    fit(first, 2)
    first.save_checkpoint(tmp_path / "ckpt")
    resumed = trainer_for(kind)
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.scheduler.state_dict() == first.scheduler.state_dict()
    assert resumed.optimizer.param_groups[0]["lr"] == first.optimizer.param_groups[0]["lr"]
    assert fit(resumed).as_dict() == reference
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert resumed.optimizer.param_groups[0]["lr"] == whole.optimizer.param_groups[0]["lr"]
    assert np.isfinite(reference["train_loss"]).all()


def test_resume_refuses_a_missing_or_other_scheduler(tmp_path):
    first = trainer_for("epoch")
    fit(first, 1)
    first.save_checkpoint(tmp_path / "ckpt")
    model, optimizer, *_ = parts("epoch")
    bare = torch_impl.training.Trainer(model, optimizer)
    with pytest.raises(
        ValueError, match=r"holds the state of a torch\.optim\.lr_scheduler\.StepLR, this trainer has no"
    ):
        bare.load_checkpoint(tmp_path / "ckpt")
    other = trainer_for("step")
    with pytest.raises(ValueError, match=r"StepLR, this trainer has a torch\.optim\.lr_scheduler\.OneCycleLR"):
        other.load_checkpoint(tmp_path / "ckpt")
    assert other.epoch == 0 and other.scheduler.last_epoch == 0  # refused before anything changed


def test_a_scheduler_the_trainer_cannot_step_is_refused():
    model, optimizer, scheduler, _ = parts("epoch")
    config = OptimizerConfig("adamw", learning_rate=0.05, weight_decay=0.01)
    with pytest.raises(ValueError, match=r"an OptimizerConfig brings its own schedule .*ScheduleConfig"):
        torch_impl.training.Trainer(model, config, scheduler=scheduler)
    other = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="built over another optimizer"):
        torch_impl.training.Trainer(model, other, scheduler=scheduler)
    with pytest.raises(ValueError, match=r"scheduler_interval must be one of \('epoch', 'step'\), got 'batch'"):
        torch_impl.training.Trainer(model, optimizer, scheduler=scheduler, scheduler_interval="batch")
    with pytest.raises(TypeError, match="must be a torch.optim.lr_scheduler scheduler, got function"):
        torch_impl.training.Trainer(model, optimizer, scheduler=lambda step: 1.0)
    model, optimizer, plateau, _ = parts("plateau")
    with pytest.raises(ValueError, match="ReduceLROnPlateau reads an epoch's loss"):
        torch_impl.training.Trainer(model, optimizer, scheduler=plateau, scheduler_interval="step")
