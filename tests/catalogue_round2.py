"""The bad-input catalogue, round 2 (issue 22): writers own what they write, checkpoints steer no
deletion, concurrent use is safe, misuse is refused before work starts. Rows as in
tests/test_bad_inputs.py (which runs them), every one ``new=False``: each was found by the sweep the
issue reports. This module: training, checkpoints, callbacks' files; tests/catalogue_round2_data.py:
prepared datasets; tests/catalogue_round2_reports.py: compare's and bench's output folders. Names
that only the fixed code has are imported inside the rows, so that the rows also run against the
code before the fix (their verdicts were taken that way).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import types
from pathlib import Path

import numpy as np
import torch

from ml_patterns.callbacks import Callback, EarlyStopping, HistoryLogger, ModelCheckpoint
from ml_patterns.errors import DestinationError
from ml_patterns.io import _host
from tests.catalogue import (
    Case,
    Scene,
    dead_pid,
    edit_state,
    regression_data,
    resumer_unchanged,
    snapshot,
    trainer,
    trainer_state,
)

BACKENDS = ("torch", "jax")


def fresh(backend: str, callbacks=()):
    return trainer(backend, 0, callbacks)


def fit(scene: Scene, backend: str, callbacks=(), epochs: int = 2, val: bool = True, keep: str = "trainer"):
    """A fresh trainer (kept in ``scene.notes[keep]``) fit ``epochs`` epochs on the regression batches."""
    run = scene.notes[keep] = fresh(backend, callbacks)
    return run.fit(regression_data(), regression_data() if val else None, num_epochs=epochs)


def disk_full(scene: Scene) -> None:
    """Every fsync from now on fails as on a full disk (the data written so far never reaches it)."""

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    scene.monkeypatch.setattr(os, "fsync", no_space)


# -- who writes where: ModelCheckpoint folders, HistoryLogger files -----------------------------
def model_checkpoint_rows(backend: str) -> list[Case]:
    def ckpt(**kwargs):
        return ModelCheckpoint(Path("ckpts").absolute(), save_best_only=False, save_top_k=1, save_last=True, **kwargs)

    def run1(scene: Scene) -> None:
        # val_loss scripted (5, 4, 3, ...): run 2's first epoch beats run 1's best, whatever the machine.
        top1 = ModelCheckpoint(scene.root / "run1", save_best_only=False, save_top_k=1, save_last=True)
        fit(scene, backend, [Scripted(), top1])
        scene.notes["run1"] = snapshot(scene.root / "run1")

    def run2(scene: Scene) -> None:
        second = fresh(backend, [Scripted(), ModelCheckpoint(scene.root / "run2", save_best_only=False, save_top_k=1)])
        second.load_checkpoint(scene.root / "run1" / "last")
        second.fit(regression_data(), regression_data(), num_epochs=4)

    def tampered(kind: str):
        """A checkpoint whose ModelCheckpoint state lists ``victim`` (outside its folder) among the
        checkpoints to prune, checksums recomputed: ``absolute`` and ``dotdot`` name it, ``legacy``
        is a checkpoint of the version before the folder was recorded."""

        def setup(scene: Scene) -> None:
            fit(scene, backend, [ckpt()], epochs=1)
            scene.file("victim/precious.txt", "keep me")
            name = "../victim" if kind == "dotdot" else str(scene.root / "victim")

            def change(state):
                callback = state["callbacks"][0]["state"]  # {"key": "ModelCheckpoint", "state": ...}
                callback["best_k"] = {name: 1e9}
                if kind == "legacy":
                    callback.pop("dirpath", None)

            edit_state(change, checksum=True)(scene.root / "ckpts" / "last")
            scene.resumer = fresh(backend, [ckpt()])
            scene.resumer_state = trainer_state(scene.resumer)

        return setup

    def resume_and_fit(scene: Scene) -> None:
        scene.resumer.load_checkpoint(scene.root / "ckpts" / "last")
        scene.resumer.fit(regression_data(), regression_data(), num_epochs=3)

    def victim_kept(scene: Scene, _) -> bool:
        return (scene.root / "victim" / "precious.txt").read_text() == "keep me"

    return [
        Case(
            f"model-checkpoint-into-a-folder-of-user-files-{backend}",
            "fixed-harmful",
            lambda s: fit(s, backend, [ModelCheckpoint(s.root / "mine")]),
            DestinationError,
            r"mine: it is not a folder of training checkpoints written by ml-patterns .* holds 1 entry \(thesis\.tex\)",
            setup=lambda s: s.file("mine/thesis.tex", "chapter 1"),
        ),
        Case(
            f"run2-resumed-from-run1-prunes-none-of-run1-{backend}",
            "fixed-harmful",
            run2,
            None,
            setup=run1,
            changes=True,
            kept=lambda s, _: (
                snapshot(s.root / "run1") == s.notes["run1"] and os.listdir(s.root / "run2") == ["epoch_2"]
            ),
        ),
        Case(
            f"checkpoint-best-k-naming-an-outside-directory-{backend}",
            "fixed-harmful",
            resume_and_fit,
            ValueError,
            r"ModelCheckpoint state names '/.*victim' among its checkpoints: not a path inside its folder",
            setup=tampered("absolute"),
            kept=lambda s, r: victim_kept(s, r) and resumer_unchanged(s, r),
        ),
        Case(
            f"checkpoint-best-k-climbing-out-with-dotdot-{backend}",
            "fixed-harmful",
            resume_and_fit,
            ValueError,
            r"names '\.\./victim' among its checkpoints: not a path inside its folder",
            setup=tampered("dotdot"),
            kept=lambda s, r: victim_kept(s, r) and resumer_unchanged(s, r),
        ),
        Case(
            f"checkpoint-of-the-older-format-naming-a-directory-{backend}",
            "fixed-harmful",
            resume_and_fit,
            None,
            setup=tampered("legacy"),
            changes=True,
            kept=victim_kept,
        ),
        Case(
            f"resume-from-a-best-checkpoint-decides-as-the-whole-run-{backend}",
            "fixed-harmful",
            lambda s: resume_from_best(s, backend),
            None,
            changes=True,
            kept=lambda s, runs: runs[0] == runs[1],
        ),
        Case(
            f"early-stopping-on-val-loss-without-a-val-loader-{backend}",
            "fixed-weak",
            lambda s: fit(s, backend, [EarlyStopping(patience=1)], val=False),
            ValueError,
            r"EarlyStopping monitors 'val_loss', which this fit cannot log: no val_loader was given",
            kept=lambda s, _: s.notes["trainer"].epoch == 0,
        ),
        Case(
            f"model-checkpoint-best-on-val-loss-without-a-val-loader-{backend}",
            "fixed-weak",
            lambda s: fit(s, backend, [ModelCheckpoint(s.root / "ckpts")], val=False),
            ValueError,
            r"ModelCheckpoint monitors 'val_loss', which this fit cannot log",
            kept=lambda s, _: s.notes["trainer"].epoch == 0,
        ),
        Case(
            f"num-epochs-negative-{backend}",
            "fixed-weak",
            lambda s: fit(s, backend, epochs=-1),
            ValueError,
            r"num_epochs must be an integer >= 0, got -1",
        ),
        Case(
            f"num-epochs-fractional-{backend}",
            "fixed-weak",
            lambda s: fit(s, backend, epochs=2.5),
            TypeError,
            r"num_epochs must be an integer >= 0, got 2\.5",
        ),
        Case(
            f"num-epochs-zero-trains-nothing-{backend}",
            "refused",
            lambda s: fit(s, backend, epochs=0),
            None,
            kept=lambda s, history: len(history) == 0,
        ),
        Case(
            f"resume-past-num-epochs-{backend}",
            "fixed-weak",
            lambda s: (s.resumer.load_checkpoint(s.root / "ckpt"), s.resumer.fit(regression_data(), num_epochs=2)),
            ValueError,
            r"num_epochs=2, but this trainer has already trained 3 epochs \(resumed from a checkpoint\?\)",
            setup=lambda s: (
                trainer(backend, 3).save_checkpoint(s.root / "ckpt"),
                setattr(s, "resumer", fresh(backend)),
            ),
        ),
        Case(
            f"disk-full-while-saving-a-checkpoint-{backend}",
            "fixed-weak",
            lambda s: (disk_full(s), s.resumer.save_checkpoint(s.root / "ckpt")),
            DestinationError,
            r"^disk full at .*ckpt: nothing was replaced, the previous copy is kept",
            setup=lambda s: (setattr(s, "resumer", trainer(backend, 1)), s.resumer.save_checkpoint(s.root / "ckpt")),
        ),
    ]


class Scripted(Callback):
    """Sets each epoch's ``val_loss`` from ``tests.test_resume.SCRIPT`` for the callbacks after it."""

    def on_epoch_end(self, epoch, trainer, metrics):
        from tests.test_resume import SCRIPT

        metrics["val_loss"] = SCRIPT[epoch]


def resume_from_best(scene: Scene, backend: str) -> tuple[dict, dict]:
    """The decisions of the epochs after epoch 2, uninterrupted and resumed from epoch 2's checkpoint."""
    from tests.test_resume import RESUME_FROM, run

    folder, vault = scene.root / "run", scene.root / "vault"
    vault.mkdir()
    _, decisions, _ = run(backend, folder, vault)
    shutil.rmtree(folder / RESUME_FROM)
    shutil.copytree(vault / RESUME_FROM, folder / RESUME_FROM)
    _, resumed, _ = run(backend, folder, scene.root / "unused", folder / RESUME_FROM)
    return {epoch: value for epoch, value in decisions.items() if epoch > 2}, resumed


def hold_lock(scene: Scene, pid: int) -> None:
    scene.file("ckpts/.ml-patterns.lock", json.dumps({"host": _host(), "pid": pid}))


def first_writer(scene: Scene) -> None:
    scene.notes["first"] = first = ModelCheckpoint(scene.root / "ckpts")
    first.on_train_start(types.SimpleNamespace())  # training, not finished


def history_names(scene: Scene) -> None:
    for rate in ("0.001", "0.01", "0.1"):
        fit(scene, "torch", [HistoryLogger(scene.root / "runs" / f"history_lr{rate}")], epochs=1)


WRITER_CASES = [
    *model_checkpoint_rows("torch"),
    *model_checkpoint_rows("jax"),
    Case(
        "model-checkpoint-folder-is-the-working-directory",
        "fixed-weak",
        lambda s: fit(s, "torch", [ModelCheckpoint(".")]),
        DestinationError,
        r"refusing to write to \.: it is the working directory or holds it",
    ),
    Case(
        "model-checkpoint-folder-is-a-file",
        "fixed-weak",
        lambda s: fit(s, "torch", [ModelCheckpoint(s.root / "afile")]),
        DestinationError,
        r"refusing to replace .*afile: it is not a directory",
        setup=lambda s: s.file("afile", "precious"),
    ),
    Case(
        "model-checkpoint-folder-locked-by-a-live-process",
        "fixed-harmful",
        lambda s: fit(s, "torch", [ModelCheckpoint(s.root / "ckpts", save_last=True)]),
        DestinationError,
        r"ckpts is being written by process \d+ on .*: two writers would overwrite each other's files",
        setup=lambda s: hold_lock(s, os.getppid()),
    ),
    Case(
        "model-checkpoint-lock-of-a-dead-process-taken-over",
        "fixed-weak",
        lambda s: fit(s, "torch", [ModelCheckpoint(s.root / "ckpts", save_best_only=False, save_last=True)]),
        None,
        setup=lambda s: hold_lock(s, dead_pid()),
        changes=True,
        kept=lambda s, _: sorted(os.listdir(s.root / "ckpts")) == ["epoch_0", "epoch_1", "last"],
    ),
    Case(
        "two-model-checkpoints-of-one-process-share-a-folder",
        "fixed-harmful",
        lambda s: fit(s, "torch", [ModelCheckpoint(s.root / "ckpts")]),
        DestinationError,
        r"ckpts is already written by another ModelCheckpoint in this process",
        setup=first_writer,
    ),
    Case(
        "model-checkpoint-save-top-k-a-bool",
        "fixed-weak",
        lambda s: ModelCheckpoint(s.root / "ckpts", save_top_k=True),
        ValueError,
        r"save_top_k must be -1, 0 or positive, got True",
    ),
    Case(
        "model-checkpoint-every-epoch-needs-no-val-loader",
        "refused",
        lambda s: fit(s, "torch", [ModelCheckpoint(s.root / "ckpts", save_best_only=False)], val=False),
        None,
        changes=True,
        kept=lambda s, _: sorted(os.listdir(s.root / "ckpts")) == ["epoch_0", "epoch_1"],
    ),
    Case(
        "history-logger-names-with-dots-kept-whole",
        "fixed-harmful",
        history_names,
        None,
        changes=True,
        kept=lambda s, _: (
            sorted(os.listdir(s.root / "runs"))
            == sorted(f"history_lr{rate}.{kind}" for rate in ("0.001", "0.01", "0.1") for kind in ("csv", "json"))
        ),
    ),
    Case(
        "history-logger-onto-a-user-file",
        "fixed-harmful",
        lambda s: fit(s, "torch", [HistoryLogger(s.root / "results")]),
        DestinationError,
        r"refusing to write the history to .*results\.csv: it exists and is not a history",
        setup=lambda s: s.file("results.csv", "sample,score\na,1\n"),
    ),
    Case(
        "history-logger-name-ending-in-csv",
        "refused",
        lambda s: fit(s, "torch", [HistoryLogger(s.root / "h.csv")], epochs=1),
        None,
        changes=True,
        kept=lambda s, _: sorted(os.listdir(s.root)) == ["h.csv", "h.json"],
    ),
    Case(
        "history-logger-disk-full-keeps-the-last-history",
        "fixed-weak",
        lambda s: (disk_full(s), s.notes["trainer"].fit(regression_data(), num_epochs=2)),
        DestinationError,
        r"^disk full at .*history\.csv",
        setup=lambda s: fit(s, "torch", [HistoryLogger(s.root / "history")], epochs=1, val=False),
    ),
    Case(
        "torch-optimizer-over-another-models-parameters",
        "fixed-harmful",
        lambda s: torch_trainer_with_foreign_optimizer(),
        ValueError,
        r"the AdamW optimizer holds \d+ of its \d+ parameters that are not this model's",
    ),
    Case(
        "num-epochs-a-bool",
        "fixed-weak",
        lambda s: fit(s, "torch", epochs=True),
        TypeError,
        r"num_epochs must be an integer >= 0, got True",
    ),
    Case(
        "num-epochs-a-numpy-integer",
        "refused",
        lambda s: fit(s, "torch", epochs=np.int64(1)),
        None,
        kept=lambda s, history: len(history) == 1,
    ),
    Case(
        "ddp-ranks-with-unequal-batch-counts",
        "fixed-harmful",
        lambda s: uneven_ranks(),
        Exception,  # torch.multiprocessing's ProcessRaisedException, carrying the rank's error
        r"the training loader yields \d batches on rank \d, and between 3 and 4 across ranks",
    ),
    Case(
        "checkpoint-loaded-while-another-process-saves",
        "fixed-harmful",
        lambda s: race_saves(s),
        None,
        changes=True,
        kept=lambda s, result: result[1] > 0 and not result[2],
    ),
]


def race_saves(scene: Scene):
    from tests.test_checkpoint_concurrency import race

    return race(scene.root / "last", 2)


def torch_trainer_with_foreign_optimizer():
    import torch

    import torch_impl.training
    from tests.test_training import regressor

    model, other = regressor("torch"), regressor("torch")
    return torch_impl.training.Trainer(model, torch.optim.AdamW(other.parameters(), lr=0.01))


def uneven_ranks():
    import torch_impl.distributed

    return torch_impl.distributed.launch(_uneven_rank, 2)


def _uneven_rank(context) -> None:
    """Rank 1's loader yields one batch more than rank 0's."""
    import torch_impl.training

    batches = regression_data()
    loader = batches if context.rank == 0 else [*batches, batches[0]]
    trained = torch_impl.training.Trainer(SumsRegressor(), _sgd(), distributed=context)
    trained.fit(loader, num_epochs=1)


class SumsRegressor(torch.nn.Module):
    """A linear regressor with the ``loss_sums`` that data parallelism needs."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def compute_loss(self, batch):
        return ((self.linear(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()

    def loss_sums(self, batch, weight):
        error = (self.linear(batch["x"]).squeeze(-1) - batch["y"]) ** 2
        return {"squared_error": ((error * weight).sum(), weight.sum())}


def _sgd():
    from ml_patterns.optim import OptimizerConfig

    return OptimizerConfig("sgd", learning_rate=0.01, momentum=0.0)
