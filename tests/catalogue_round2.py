"""The bad-input catalogue, round 2 (issue 22): writers own what they write, checkpoints steer no
deletion, concurrent use is safe, misuse is refused before work starts. Rows as in
tests/test_bad_inputs.py (which runs them), every one ``new=False``: each was found by the sweep the
issue reports. Names that only the fixed code has are imported inside the rows, so that the rows
also run against the code before the fix (their verdicts were taken that way).
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
from ml_patterns.data import DatasetError, LazyDataset
from ml_patterns.errors import DestinationError
from ml_patterns.io import _host
from ml_patterns.molecules.sources import SourceError
from tests.catalogue import (
    Case,
    Scene,
    dead_pid,
    edit_manifest,
    edit_state,
    regression_data,
    resumer_unchanged,
    snapshot,
    trainer,
    trainer_state,
)

BACKENDS = ("torch", "jax")
SOLUBILITY = "smiles,log.S\nCCO,1.5\nCCN,2\nCCC,3\nCCCC,4\nc1ccccc1,5\nCC(=O)O,6\n"


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
                callback = state["callbacks"][0]
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


# -- prepared datasets: the manifest, labels, live readers, printing, a full disk -----------------
def read_while_replaced(scene: Scene) -> tuple[int, int, list[int]]:
    """A live reader of ds (one shard open at a time) while ds is prepared again from other molecules:
    ``(records served, refusals, indices that served another molecule)``."""
    reader, before = scene.notes["reader"], scene.notes["before"]
    reader[0]
    scene.prepare(overwrite=True)
    served, refused, wrong = 0, 0, []
    for index in range(0, len(before), 7):
        try:
            record = reader[index]
        except DatasetError:
            refused += 1
            continue
        served += 1
        if record["smiles"] != before[index]:
            wrong.append(index)
    return served, refused, wrong


def live_reader(scene: Scene) -> None:
    scene.dataset()
    scene.file("mols.csv", "smiles,y\n" + "".join(f"{'C' * n}O,{n}\n" for n in range(1, 40)))
    everything = LazyDataset(scene.root / "ds")
    scene.notes["before"] = [record["smiles"] for record in everything]
    everything.close()
    scene.notes["reader"] = LazyDataset(scene.root / "ds", max_open_shards=1)


def per_file_items(scene: Scene, folder: str = "items") -> None:
    for i in range(20):
        scene.file(f"{folder}/item{i}.json", json.dumps({"i": i}))
    scene.file(f"{folder}/index.json", json.dumps([{"file": f"item{i}.json"} for i in range(20)]))


def root_resolutions(scene: Scene) -> int:
    """How often reading 20 per-file items resolves the dataset's root."""
    dataset = LazyDataset(scene.root / "items")
    root, calls, resolve = scene.root / "items", [], Path.resolve

    def counting(self, *args, **kwargs):
        if self == root:
            calls.append(self)
        return resolve(self, *args, **kwargs)

    scene.monkeypatch.setattr(Path, "resolve", counting)
    for i in range(len(dataset)):
        dataset[i]
    return len(calls)


def replaced_per_file_dataset(scene: Scene):
    dataset = LazyDataset(scene.root / "items")
    dataset[0]
    os.rename(scene.root / "items", scene.root / "items-old")
    per_file_items(scene)
    (scene.root / "items" / "item1.json").write_text(json.dumps({"i": "another"}))
    return dataset[1]


def info_output(scene: Scene) -> str:
    from ml_patterns_app.cli import main

    scene.capsys.readouterr()
    assert main(["info", "ds"]) == 0
    return scene.capsys.readouterr().out


def train_log_s(scene: Scene, backend: str):
    from ml_patterns.data import Subset
    from tests.test_training import IMPLS, loaders, make_trainer

    manifest = scene.prepare(target_cols=["log.S"])
    train = Subset(LazyDataset(scene.root / "ds", split="train"), range(6))
    run = make_trainer(IMPLS[backend], manifest)
    return manifest, run.fit(loaders(IMPLS[backend], train, train)[0], num_epochs=1)


def prepare_cli_on_a_full_disk(scene: Scene) -> tuple[int, str]:
    disk_full(scene)
    return scene.cli("prepare", "--csv", "mols.csv", "--target-cols", "y", "--out", "ds", "--quiet")


def change_a_mean(manifest: dict) -> None:
    target = next(iter(manifest["targets"].values()))
    target["mean"] += 1.0


DATASET_CASES = [
    Case(
        "manifest-mean-edited-fails-verify",
        "fixed-harmful",
        lambda s: s.cli("info", "ds", "--verify"),
        1,
        r"checksum mismatch in 1 file\(s\): manifest\.json",
        setup=lambda s: (s.dataset(), edit_manifest(s, change_a_mean)),
    ),
    Case(
        "manifest-without-its-digest-is-not-verified",
        "fixed-weak",
        lambda s: s.cli("info", "ds", "--verify"),
        1,
        r"checksum mismatch in 1 file\(s\): manifest\.json",
        setup=lambda s: (s.dataset(), edit_manifest(s, lambda m: m.pop("manifest_sha256", None))),
    ),
    Case(
        "prepare-label-with-one-value",
        "fixed-weak",
        lambda s: s.prepare(),
        SourceError,
        r"mols\.csv: label column 'y' has one value \(1\) for every training molecule: nothing to learn",
        setup=lambda s: s.file("mols.csv", "smiles,y\nCCO,1\nCCN,1\nCCC,1\n"),
    ),
    Case(
        "prepare-label-with-one-value-cli",
        "fixed-weak",
        lambda s: s.cli("prepare", "--csv", "mols.csv", "--target-cols", "y", "--out", "ds", "--quiet"),
        2,
        r"label column 'y' has one value \(1\)",
        setup=lambda s: s.file("mols.csv", "smiles,y\nCCO,1\nCCN,1\nCCC,1\n"),
    ),
    Case(
        "prepare-overwrite-with-a-constant-label-keeps-the-dataset",
        "fixed-weak",
        lambda s: s.prepare(overwrite=True),
        SourceError,
        r"label column 'y' has one value",
        setup=lambda s: (s.dataset(), s.file("mols.csv", "smiles,y\nCCO,2\nCCN,2\nCCC,2\n")),
    ),
    *[
        Case(
            f"label-column-named-log.S-trains-{backend}",
            "fixed-weak",
            lambda s, backend=backend: train_log_s(s, backend),
            None,
            setup=lambda s: s.file("mols.csv", SOLUBILITY),
            changes=True,
            kept=lambda s, result: result[0]["targets"]["log_S"]["column"] == "log.S" and len(result[1]) == 1,
        )
        for backend in BACKENDS
    ],
    Case(
        "label-columns-equal-once-dots-become-underscores",
        "fixed-weak",
        lambda s: s.prepare(target_cols=["a.b", "a_b"]),
        None,
        setup=lambda s: s.file("mols.csv", "smiles,a.b,a_b\nCCO,1,4\nCCN,2,5\nCCC,3,7\n"),
        changes=True,
        kept=lambda s, manifest: (
            list(manifest["targets"]) == ["a_b", "a_b_2"] and manifest["targets"]["a_b"]["column"] == "a.b"
        ),
    ),
    Case(
        "label-column-named-like-the-masked-token-head",
        "fixed-weak",
        lambda s: s.prepare(target_cols=["mlm"]),
        None,
        setup=lambda s: s.file("mols.csv", "smiles,mlm\nCCO,1\nCCN,2\nCCC,3\n"),
        changes=True,
        kept=lambda s, manifest: list(manifest["targets"]) == ["mlm_2"],
    ),
    Case(
        "prepare-overwrite-under-a-live-reader",
        "fixed-harmful",
        read_while_replaced,
        None,
        setup=live_reader,
        changes=True,
        kept=lambda s, result: not result[2] and result[1] > 0,
    ),
    Case(
        "per-file-dataset-replaced-under-a-live-reader",
        "fixed-harmful",
        replaced_per_file_dataset,
        DatasetError,
        r"items was replaced while being read \(prepared again\?\)",
        setup=per_file_items,
        changes=True,
    ),
    Case(
        "lazy-dataset-resolves-its-root-once",
        "fixed-weak",
        root_resolutions,
        None,
        setup=per_file_items,
        kept=lambda s, calls: calls == 0,
    ),
    Case(
        "smiles-with-a-terminal-escape-printed-escaped",
        "fixed-harmful",
        info_output,
        None,
        setup=lambda s: (s.file("mols.csv", MOLECULES_WITH_ESCAPE), s.prepare()),
        kept=lambda s, out: "\x1b" not in out and "\\x1b[2J" in out,
    ),
    Case(
        "file-name-with-a-terminal-escape-in-an-error",
        "fixed-harmful",
        lambda s: s.cli("prepare", "--csv", "m\x1b[2J.csv", "--target-cols", "y", "--out", "ds", "--quiet"),
        2,
        r"m\\x1b\[2J\.csv: no such file",  # the escape written out: a raw one does not match
    ),
    Case(
        "disk-full-while-preparing-keeps-the-dataset",
        "fixed-weak",
        lambda s: (disk_full(s), s.prepare(overwrite=True)),
        DestinationError,
        r"^disk full at .*ds.*: nothing was replaced, the previous copy is kept",
        setup=lambda s: (s.dataset(), s.file("mols.csv")),
    ),
    Case(
        "disk-full-while-preparing-cli",
        "fixed-weak",
        lambda s: prepare_cli_on_a_full_disk(s),
        2,
        r"error: disk full at .*ds",
        setup=lambda s: s.file("mols.csv"),
    ),
]

MOLECULES_WITH_ESCAPE = "smiles,y\nCCO,1\nCCN,2\nCCC,3\nC\x1b[2JC,4\n"

ROUND2 = WRITER_CASES + DATASET_CASES
