"""The bad-input catalogue's machinery: the scene a row runs in, the row itself, the snapshot
taken before and after, and the helpers rows share (tests/test_bad_inputs.py holds the rows
and the test; tests/catalogue_round2.py the rows of issue 22)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ml_patterns.callbacks import Callback
from ml_patterns.checkpoint import load_checkpoint, save_checkpoint
from ml_patterns.molecules.config import PrepareConfig
from ml_patterns.molecules.prepare import prepare_dataset
from ml_patterns.optim import OptimizerConfig

VERDICTS = ("refused", "fixed-harmful", "fixed-weak", "open")
ALL_TRAIN = PrepareConfig(rdkit_properties=(), val_fraction=0.0, test_fraction=0.0)
MOLECULES = "smiles,y\nCCO,1\nCCN,2\nCCC,3\n"


@dataclasses.dataclass
class Scene:
    """A scratch directory with the means to fill it; ``root`` is also the working directory."""

    root: Path
    default_dataset: Path
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture
    resumer: Any = None  # a trainer that a row loads a damaged checkpoint into
    resumer_state: dict | None = None  # its state before the row
    notes: dict = dataclasses.field(default_factory=dict)  # what a row's setup keeps for its checks

    def file(self, relative: str, content: str | bytes = MOLECULES) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def dataset(self, relative: str = "ds") -> Path:
        """A copy of the default dataset, which the row may then damage."""
        return Path(shutil.copytree(self.default_dataset, self.root / relative))

    def prepare(self, out: str = "ds", csv: str | None = "mols.csv", **kwargs):
        options = {
            "csv_path": None if csv is None else self.root / csv,
            "target_cols": ["y"] if csv else None,
            "config": ALL_TRAIN,
            "progress": False,
        }
        return prepare_dataset(self.root / out if out else out, **{**options, **kwargs})

    def cli(self, *argv: str) -> tuple[int, str]:
        """``ml-patterns ARGV`` in this process: (exit code, standard error)."""
        from ml_patterns_app.cli import main

        self.capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
            if not isinstance(exit_.code, int):
                print(exit_.code, file=sys.stderr)
        return code, self.capsys.readouterr().err


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    verdict: str
    provoke: Callable[[Scene], object]
    # An exception or warning class, an exit code (the row runs a command: provoke returns cli()'s
    # pair), or None for a call that must succeed (checked by ``kept``).
    expect: type[BaseException] | int | None
    message: str = ""  # regex searched in the error, the warning or the command's stderr
    setup: Callable[[Scene], None] = lambda scene: None
    kept: Callable[[Scene, object], None] | None = None
    changes: bool = False
    new: bool = False
    skip: str = ""  # why the row cannot run here (checked at collection)
    usage: bool = False  # an argparse error: its usage lines come before the one-line message


def snapshot(root: Path) -> dict[str, tuple]:
    state = {}
    for parent, directories, files in os.walk(root):
        for name in directories + files:
            path = Path(parent, name)
            info = os.lstat(path)
            kind = stat.S_IFMT(info.st_mode)
            content = (
                os.readlink(path)
                if stat.S_ISLNK(info.st_mode)
                else hashlib.sha256(path.read_bytes()).hexdigest()
                if stat.S_ISREG(info.st_mode)
                else None
            )
            state[path.relative_to(root).as_posix()] = (kind, stat.S_IMODE(info.st_mode), content)
    return state


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def rewrite_json(path: Path, change: Callable[[object], object], *, rechecksum: bool = False) -> None:
    """Edits a JSON file of a dataset; with ``rechecksum`` its checksum in the manifest follows."""
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    if rechecksum:
        manifest_path = path.parent / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["checksums"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        manifest_path.write_text(json.dumps(manifest))


def edit_manifest(scene: Scene, change: Callable[[dict], None]) -> None:
    def apply(manifest):
        change(manifest)
        return manifest

    rewrite_json(scene.root / "ds" / "manifest.json", apply)


def entry_without_split(entries):
    del entries[3]["split"]
    return entries


def write_index(scene: Scene, entries: list[dict]) -> None:
    (scene.root / "ds" / "index.json").write_text(json.dumps(entries))


def flip_byte(path: Path, offset: int = -3) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def small_checkpoint(scene: Scene) -> Path:
    import numpy as np

    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}
    return save_checkpoint(
        scene.root / "model.safetensors", arrays, backend="torch", model_class="Toy", config=None, versions={}
    )


def pickle_file(scene: Scene) -> None:
    class Exploit:
        def __reduce__(self):
            return (open, (str(scene.root / "pwned"), "w"))

    scene.file("model.safetensors", pickle.dumps(Exploit()))


def nothing_unpickled(scene: Scene, _) -> bool:
    return not (scene.root / "pwned").exists()


def torch_load_model(path: Path):
    import torch_impl.molecules.models

    return torch_impl.molecules.models.load_model(path)


def jax_load_model(path: Path):
    import jax_impl.molecules.models

    return jax_impl.molecules.models.load_model(path)


def torch_pickle(scene: Scene) -> None:
    """A torch.save file whose unpickling would create scene/pwned."""
    import torch

    class Exploit:
        def __reduce__(self):
            return (open, (str(scene.root / "pwned"), "w"))

    torch.save({"w": Exploit()}, scene.root / "model.pt")


def interrupted_prepare(scene: Scene) -> None:
    import ml_patterns.molecules.prepare as prepare_module

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    scene.monkeypatch.setattr(prepare_module, "_manifest", interrupt)
    scene.prepare()


def with_umask(mask: int, action: Callable[[], object]) -> object:
    previous = os.umask(mask)
    try:
        return action()
    finally:
        os.umask(previous)


def modes(root: Path) -> set[tuple[str, int]]:
    return {
        (kind, stat.S_IMODE(os.lstat(Path(parent, name)).st_mode))
        for parent, directories, files in os.walk(root)
        for kind, names in (("dir", directories), ("file", files))
        for name in names
    }


def skipped(manifest) -> list[tuple[int, str]]:
    return [(row["line"], row["reason"]) for row in manifest["skipped"]]


def cli_info(scene: Scene) -> tuple[int, str]:
    return scene.cli("info", str(scene.root / "ds"))


# -- training checkpoints: a small regressor trained a little on each backend ------------------
class Counter(Callback):
    """Counts epochs, resumably; with ``fail`` it refuses any saved state (a callback that breaks mid-load)."""

    def __init__(self, fail: bool = False):
        self.seen, self.fail = 0, fail

    def on_epoch_end(self, epoch, trainer, metrics):
        self.seen += 1

    def state_dict(self) -> dict:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        if self.fail:
            raise RuntimeError("this callback cannot take the saved state")
        self.seen = state["seen"]


def trainer(backend: str, epochs: int, callbacks=()):
    from tests.test_training import IMPLS, regressor

    optimizer = OptimizerConfig("adamw", learning_rate=0.05, weight_decay=0.01)
    trained = IMPLS[backend].training.Trainer(regressor(backend), optimizer, list(callbacks))
    if epochs:
        trained.fit(regression_data(), num_epochs=epochs)
    return trained


def regression_data():
    from tests.test_training import regression_batches

    return regression_batches()


def diverging_run(backend: str):
    """A learning rate of 1e30: the loss overflows within an epoch or two; training must stop there."""
    from tests.test_training import IMPLS, regressor

    run = IMPLS[backend].training.Trainer(regressor(backend), OptimizerConfig("sgd", learning_rate=1e30, momentum=0.0))
    run.fit(regression_data(), regression_data(), num_epochs=6)
    return run


def trainer_state(trained) -> dict:
    """What a load may change, as plain values: weights, optimizer arrays, trainer state, callback states."""
    from safetensors.numpy import load_file

    with tempfile.TemporaryDirectory() as scratch:
        trained.save_checkpoint(Path(scratch) / "c")
        model, _ = load_checkpoint(Path(scratch) / "c" / "model.safetensors")
        optimizer = load_file(Path(scratch) / "c" / "optimizer.safetensors")
        state = json.loads((Path(scratch) / "c" / "trainer_state.json").read_text())
    return {
        "model": {k: v.tobytes() for k, v in model.items()},
        "optimizer": {k: v.tobytes() for k, v in optimizer.items()},
        "state": state,
    }


def resume_setup(
    backend: str, damage: Callable[[Path], None] = lambda path: None, saved_callbacks=(), callbacks=()
) -> Callable[[Scene], None]:
    """A checkpoint after 1 epoch at scene/ckpt, damaged; a trainer 2 epochs on (``scene.resumer``)
    whose state is recorded, so that the row can check a failed load left it as it was."""

    def setup(scene: Scene) -> None:
        trainer(backend, 1, saved_callbacks).save_checkpoint(scene.root / "ckpt")
        damage(scene.root / "ckpt")
        scene.resumer = trainer(backend, 2, callbacks)
        scene.resumer_state = trainer_state(scene.resumer)

    return setup


def resumer_unchanged(scene: Scene, _) -> bool:
    return trainer_state(scene.resumer) == scene.resumer_state


def rechecksum(checkpoint: Path) -> None:
    """Rewrites checksums.json to match the files, as a tool editing a checkpoint on purpose would."""
    from ml_patterns.training_checkpoint import CHECKSUMS_FILE, checksum_table

    (checkpoint / CHECKSUMS_FILE).write_text(checksum_table(checkpoint))


def edit_state(change: Callable[[dict], None], *, checksum: bool) -> Callable[[Path], None]:
    def damage(checkpoint: Path) -> None:
        path = checkpoint / "trainer_state.json"
        state = json.loads(path.read_text())
        change(state)
        path.write_text(json.dumps(state))
        if checksum:
            rechecksum(checkpoint)

    return damage


def flip_optimizer_bytes(checkpoint: Path) -> None:
    """64 flipped bytes at the end of the optimizer file: inside its last arrays (an Adam moment)."""
    path = checkpoint / "optimizer.safetensors"
    data = bytearray(path.read_bytes())
    for offset in range(len(data) - 64, len(data)):
        data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
