"""Resume means resume: a run resumed from any checkpoint (a best one, not only the last) decides
exactly as the uninterrupted run did: the same checkpoints saved and pruned, the same early stop.

The monitored metric is scripted (a callback ahead of the others sets ``val_loss`` per epoch), so
the decisions do not hang on how the model happens to train on this machine: a later epoch worse
than the best resumed from but better than the best before it, the case a checkpoint holding the
callback states from before its own epoch gets wrong.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ml_patterns.callbacks import Callback, EarlyStopping, HistoryLogger, ModelCheckpoint, ProgressBar
from ml_patterns.optim import OptimizerConfig
from ml_patterns.training_resume import callback_keys
from tests.test_training import IMPLS, regression_batches, regressor

# Epoch 2 is a best checkpoint (3.0) that is not the last; epoch 3 (3.5) is worse than it but better
# than the best before it (4.0); epoch 5 is the best; patience 3 stops after epoch 8.
SCRIPT = [5.0, 4.0, 3.0, 3.5, 3.2, 2.9, 3.3, 3.4, 3.6, 3.7]
RESUME_FROM = "epoch_2"


class Scripted(Callback):
    """Replaces the epoch's ``val_loss`` with the script's value before the callbacks after it see it."""

    def on_epoch_end(self, epoch, trainer, metrics):
        metrics["val_loss"] = SCRIPT[epoch]


class Spy(Callback):
    """Records every epoch's decisions, and keeps a copy of each checkpoint before it can be pruned."""

    def __init__(self, checkpoints: ModelCheckpoint, stopper: EarlyStopping, vault: Path):
        self.checkpoints, self.stopper, self.vault, self.decisions = checkpoints, stopper, vault, {}

    def on_epoch_start(self, epoch, trainer):
        for saved in self.checkpoints.dirpath.glob("epoch_*"):
            if not (self.vault / saved.name).exists():
                shutil.copytree(saved, self.vault / saved.name)

    def on_epoch_end(self, epoch, trainer, metrics):
        self.decisions[epoch] = {
            "kept": sorted(Path(path).name for path in self.checkpoints.best_k),
            "best": Path(self.checkpoints.best_model_path).name,
            "wait": self.stopper.wait,
            "stopper_best": self.stopper.best,
            "stop": trainer.should_stop,
        }


def run(backend: str, folder: Path, vault: Path, resume: Path | None = None):
    checkpoints = ModelCheckpoint(folder, save_top_k=2, save_last=True)
    stopper = EarlyStopping(patience=3, min_delta=0.0)
    spy = Spy(checkpoints, stopper, vault)
    optimizer = OptimizerConfig("adamw", learning_rate=0.05, weight_decay=0.01)
    trainer = IMPLS[backend].training.Trainer(regressor(backend), optimizer, [Scripted(), checkpoints, stopper, spy])
    if resume is not None:
        trainer.load_checkpoint(resume)
    trainer.fit(regression_batches(), regression_batches((8, 8)), num_epochs=len(SCRIPT))
    return trainer, spy.decisions, sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("backend", IMPLS)
def test_resuming_from_a_best_checkpoint_decides_as_the_uninterrupted_run(backend, tmp_path):
    folder, vault = tmp_path / "run", tmp_path / "vault"
    vault.mkdir()
    whole, decisions, files = run(backend, folder, vault)
    assert len(whole.history) == 9 and "EarlyStopping at epoch 8" in whole.stop_reason
    assert files == ["epoch_2", "epoch_5", "last"]  # epochs 0 and 1 pruned (top 2)
    assert decisions[8]["kept"] == ["epoch_2", "epoch_5"] and decisions[8]["best"] == "epoch_5"

    # The checkpoint of epoch 2 as it was written (the folder's may have been rewritten since).
    shutil.rmtree(folder / RESUME_FROM)
    shutil.copytree(vault / RESUME_FROM, folder / RESUME_FROM)
    resumed, resumed_decisions, resumed_files = run(backend, folder, tmp_path / "unused", folder / RESUME_FROM)
    assert resumed_decisions == {epoch: decisions[epoch] for epoch in range(3, 9)}
    assert resumed.stop_reason == whole.stop_reason
    assert resumed_files == files
    assert resumed.history.as_dict() == whole.history.as_dict()


class Counter(Callback):
    """A stateful callback: counts the epochs it saw."""

    def __init__(self):
        self.seen = 0

    def on_epoch_end(self, epoch, trainer, metrics):
        self.seen += 1

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


class Printer(Callback):
    """A stateless callback written against the seed's Callback (no state_dict of its own)."""

    def on_epoch_end(self, epoch, trainer, metrics):
        pass


def trainer_with(backend, callbacks):
    optimizer = OptimizerConfig("adamw", learning_rate=0.05, weight_decay=0.01)
    return IMPLS[backend].training.Trainer(regressor(backend), optimizer, list(callbacks))


@pytest.mark.parametrize("backend", IMPLS)
def test_resume_matches_states_by_key_and_lets_stateless_callbacks_come_and_go(backend, tmp_path):
    stopper, counter = EarlyStopping(patience=5), Counter()
    first = trainer_with(backend, [Printer(), stopper, counter, ProgressBar(disable=True)])
    first.fit(regression_batches(), regression_batches((8, 8)), num_epochs=3)
    first.save_checkpoint(tmp_path / "ckpt")

    # Other order, the printer and the bar gone, a logger added: the states find their callbacks.
    resumed_counter, resumed_stopper = Counter(), EarlyStopping(patience=5)
    logger = HistoryLogger(tmp_path / "history")
    resumed = trainer_with(backend, [resumed_counter, logger, resumed_stopper])
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed_counter.seen == 3 and resumed_stopper.state_dict() == stopper.state_dict()
    resumed.fit(regression_batches(), regression_batches((8, 8)), num_epochs=5)
    assert resumed_counter.seen == 5 and len(resumed.history) == 5

    whole = trainer_with(backend, [EarlyStopping(patience=5), Counter()])
    whole.fit(regression_batches(), regression_batches((8, 8)), num_epochs=5)
    assert resumed.history.as_dict() == whole.history.as_dict()


@pytest.mark.parametrize("backend", IMPLS)
def test_resume_names_a_stateful_callback_missing_on_either_side(backend, tmp_path):
    first = trainer_with(backend, [Counter(), EarlyStopping(), Printer()])
    first.fit(regression_batches(), regression_batches((8, 8)), num_epochs=1)
    first.save_checkpoint(tmp_path / "ckpt")
    missing = trainer_with(backend, [Counter(), Printer()])
    with pytest.raises(ValueError, match=r"ckpt: it holds the state of callback\(s\) EarlyStopping, which"):
        missing.load_checkpoint(tmp_path / "ckpt")
    extra = trainer_with(backend, [Counter(), EarlyStopping(), Counter()])
    with pytest.raises(ValueError, match=r"this trainer's callback\(s\) Counter#2 have a state it does not hold"):
        extra.load_checkpoint(tmp_path / "ckpt")
    assert extra.epoch == 0 and len(extra.history) == 0  # refused before anything was applied
    # A trainer without callbacks (to evaluate, to fine-tune) takes the weights and ignores them.
    bare = trainer_with(backend, [])
    bare.load_checkpoint(tmp_path / "ckpt")
    assert bare.epoch == 1


def test_callback_keys_number_repeats_and_honour_state_key():
    named = Counter()
    named.state_key = "epochs-seen"
    assert callback_keys([Counter(), Printer(), Counter(), named, Counter()]) == [
        "Counter",
        "Printer",
        "Counter#2",
        "epochs-seen",
        "Counter#3",
    ]
