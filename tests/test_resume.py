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

from ml_patterns.callbacks import Callback, EarlyStopping, ModelCheckpoint
from ml_patterns.optim import OptimizerConfig
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
