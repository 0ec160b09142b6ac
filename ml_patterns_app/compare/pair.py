"""Your own model pair as a compare workload: a torch model and its Flax NNX port, your batches.

What crosses from the parent to the workers is text (``PairSpec``): each model, loss and data set
as ``MODULE:NAME``, where MODULE is a dotted module importable from the working directory (as
``python -m`` finds it) or a ``.py`` file. Each worker imports them itself:

- ``--torch`` / ``--jax``: functions called without arguments, returning a ``torch.nn.Module`` and
  an ``nnx.Module`` with ``compute_loss(batch) -> scalar`` (the seed's contract), or any modules
  when ``--torch-loss`` / ``--jax-loss`` name ``loss(model, batch) -> scalar``;
- ``--data`` (and ``--val``): a function returning the batches: an iterable, iterated once per epoch
  (a list, or an object whose ``__iter__`` starts over), of dicts of numpy arrays, the same on every
  call (both backends call it). Each side's ``compute_loss`` takes the batch as it is (an NNX
  model that wants channels last transposes in its ``compute_loss``).

Before any worker starts, ``write_initial_weights`` (a process of its own, on the CPU) builds both
models, transfers the torch weights to the NNX model with the porting toolkit
(``ml_patterns_app.porting.transfer_weights``, ``--rules``/``--pairs``/``--ignore`` passed through)
and writes each side's initial weights; a pair that does not map stops there, with the toolkit's
table, before any training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from ml_patterns.errors import UsageError
from ml_patterns_app.compare.launch import WorkerFailed
from ml_patterns_app.compare.settings import WorkerJob
from ml_patterns_app.compare.workload import Workload
from ml_patterns_app.porting.command import build_model, load_callable, load_rules


@dataclasses.dataclass(frozen=True)
class PairSpec:
    """Your pair, as ``MODULE:NAME`` texts (module docstring); ``rules``, ``pairs``, ``ignore``:
    ``transfer_weights``' options (rules as ``MODULE:NAME`` of a ``Rule`` or a list of them)."""

    torch: str
    jax: str
    data: str
    val: str | None = None
    torch_loss: str | None = None
    jax_loss: str | None = None
    rules: tuple[str, ...] = ()
    pairs: dict = dataclasses.field(default_factory=dict)
    ignore: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: Mapping) -> PairSpec:
        return cls(**{**fields, "rules": tuple(fields["rules"]), "ignore": tuple(fields["ignore"])})

    def describe(self) -> dict:
        """The report's ``dataset`` section."""
        return {"source": f"your batches ({self.data})", "path": self.data, "val": self.val, "pair": self.to_dict()}


def spec_of(value: str | Callable | None, flag: str) -> str | None:
    """``value`` as ``MODULE:NAME`` text: a text as it is, a function by where it is defined (a
    script's own functions, module ``__main__``, by the script's file)."""
    if value is None or isinstance(value, str):
        return value
    module, name = getattr(value, "__module__", None), getattr(value, "__qualname__", "")
    if module is None or "<" in name:  # a lambda or a nested function: no worker can import it
        raise UsageError(f"{flag}: {value!r} is not importable; pass a function defined at a module's top level")
    if module == "__main__":
        module = str(Path(sys.modules["__main__"].__file__).resolve())
    return f"{module}:{name}"


def check_loss(model, flag: str, spec: str, loss_flag: str) -> None:
    if not callable(getattr(model, "compute_loss", None)):
        raise UsageError(
            f"{flag} {spec!r}: {type(model).__name__} has no compute_loss(batch); define one, or pass "
            f"{loss_flag} MODULE:FN (a function loss(model, batch) -> scalar)"
        )


def write_initial_weights(spec: PairSpec, seed: int, torch_path: Path, nnx_path: Path) -> dict:
    """Checks your batches (``Batches.scan``), builds both models (torch seeded with ``seed``),
    transfers the torch weights to the NNX model and writes each side's (``ml_patterns.checkpoint``,
    the NNX one in ``jax_impl.state``'s naming).
    Returns ``{"table": the mapping table, "problems": [...]}``; with problems, nothing is written."""
    import torch
    from flax import nnx

    from jax_impl import state as jax_state
    from ml_patterns.checkpoint import save_checkpoint
    from ml_patterns_app.porting.transfer import transfer_weights
    from ml_patterns_app.porting.trees import PortingError
    from torch_impl import state as torch_state

    for data, flag in ((spec.data, "--data"), (spec.val, "--val")):  # your batches checked before any training
        if data is not None:
            Batches(data, flag).scan()
    torch.manual_seed(seed)
    torch_model = build_model(spec.torch, "--torch", torch.nn.Module, "a torch.nn.Module")
    nnx_model = build_model(spec.jax, "--jax", nnx.Module, "a flax.nnx.Module")
    mapping = {"rules": load_rules(spec.rules), "pairs": dict(spec.pairs), "ignore": list(spec.ignore)}
    try:
        weight_map = transfer_weights(torch_model, nnx_model, dry_run=True, **mapping)
    except PortingError as error:  # what the factory returned is not what can be compared
        raise UsageError(f"--jax {spec.jax!r}: {error}") from None
    if weight_map.problems:
        return {"table": str(weight_map), "problems": list(weight_map.problems)}
    transfer_weights(torch_model, nnx_model, **mapping)
    versions = {"torch": torch.__version__}
    for path, arrays, backend, model in (
        (torch_path, torch_state.to_numpy(torch_model), "torch", torch_model),
        (nnx_path, jax_state.to_numpy(nnx_model), "jax", nnx_model),
    ):
        save_checkpoint(path, arrays, backend=backend, model_class=type(model).__name__, config=None, versions=versions)
    return {"table": str(weight_map), "problems": []}


def prepare_initial_weights(spec: PairSpec, seed: int, torch_path: Path, nnx_path: Path) -> str:
    """``write_initial_weights`` in a process of its own on the CPU (this one loads neither framework,
    and no GPU memory is taken before the workers measure theirs). Returns the mapping table; a pair
    that does not map raises ``UsageError`` after printing the table: nothing has trained yet."""
    job = {"spec": spec.to_dict(), "seed": seed, "torch": str(torch_path), "nnx": str(nnx_path)}
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "ml_patterns_app.compare.pair", json.dumps(job)]
    answer = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if answer.returncode == 2:  # a user error, one line
        raise UsageError(answer.stderr.strip().splitlines()[-1].partition("error: ")[2])
    if answer.returncode != 0:
        raise WorkerFailed(f"transferring the initial weights failed:\n{answer.stderr.strip()[-4000:]}")
    result = json.loads(answer.stdout.strip().splitlines()[-1])
    if result["problems"]:
        print(result["table"], flush=True)
        raise UsageError(
            f"the weights of --torch {spec.torch} do not map onto --jax {spec.jax} (the table above; nothing "
            f"was trained): {'; '.join(result['problems'])}. Pair layers with --pairs TORCH=NNX, leave tensors "
            "out with --ignore NAME, or give custom layers a --rules MODULE:NAME (docs/PORTING.md)"
        )
    return result["table"]


class Batches:
    """Your ``--data`` batches, checked once (``scan``): dicts of numpy arrays, at least one, the
    same on every pass. Iterating gives the iterable's own ``iter`` again each epoch."""

    def __init__(self, spec: str, flag: str):
        self.spec, self.flag = spec, flag
        self.batches = load_callable(spec, flag)()
        if not isinstance(self.batches, Iterable) or isinstance(self.batches, Mapping):
            raise UsageError(
                f"{flag} {spec!r} returned a {type(self.batches).__name__}; return an iterable of batches "
                "(dicts of numpy arrays), e.g. a list"
            )

    def __iter__(self):
        return iter(self.batches)

    def scan(self) -> dict:
        """One pass: ``{"steps", "samples", "sha256", "first"}``, after checking every batch."""
        digest, steps, samples, first = hashlib.sha256(), 0, 0, None
        for index, batch in enumerate(self):
            if not isinstance(batch, Mapping) or not batch:
                what = type(batch).__name__ if batch else "empty dict"
                raise UsageError(f"{self.flag} {self.spec!r}: batch {index} is a {what}, not a dict of numpy arrays")
            for name in sorted(batch):
                array = batch[name]
                if not isinstance(array, np.ndarray):
                    raise UsageError(
                        f"{self.flag} {self.spec!r}: batch {index}[{name!r}] is a {type(array).__name__}, "
                        "not a numpy array"
                    )
                digest.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
                digest.update(np.ascontiguousarray(array).tobytes())
            steps, samples = steps + 1, samples + len(next(iter(batch.values())))
            first = batch if first is None else first
        if steps == 0:
            raise UsageError(
                f"{self.flag} {self.spec!r} yielded no batch (a generator already used up? return a list, or an "
                "object whose __iter__ starts over)"
            )
        if sum(1 for _ in self) != steps:
            raise UsageError(
                f"{self.flag} {self.spec!r}: a second pass gives another number of batches; return a list, or an "
                "object whose __iter__ starts over each epoch"
            )
        return {"steps": steps, "samples": samples, "sha256": digest.hexdigest(), "first": first}


def pair_workload(impl, runtime, job: WorkerJob, devices: int, device) -> Workload:
    """Your pair on ``impl``'s side, from the initial weights ``prepare_initial_weights`` wrote."""
    if devices != 1:
        raise UsageError("--devices with --torch/--jax: your pair trains on one device (data-parallel needs loss_sums)")
    spec = PairSpec.from_dict(job.pair)
    side = importlib.import_module(f"ml_patterns_app.compare.{impl.__name__.removesuffix('_impl')}_side")
    model = side.user_model(spec, job)
    train = Batches(spec.data, "--data")
    scanned = train.scan()
    val = None
    if spec.val is not None:
        val = Batches(spec.val, "--val")
        val.scan()
    return Workload(
        model=model,
        transform=None,
        train_loader=train,
        val_loader=val,
        steps_per_epoch=scanned["steps"],
        samples_per_epoch=scanned["samples"],
        pad_rows=None,  # padding needs loss_sums(batch, weight); a short last batch is one more jax.jit program
        first_batch=lambda: scanned["first"],
        record={"data_sha256": scanned["sha256"]},
        test_metrics=lambda trained: {},
    )


if __name__ == "__main__":  # prepare_initial_weights' process
    from ml_patterns.user_errors import USER_ERRORS

    fields = json.loads(sys.argv[1])
    try:
        table = write_initial_weights(
            PairSpec.from_dict(fields["spec"]), fields["seed"], Path(fields["torch"]), Path(fields["nnx"])
        )
    except USER_ERRORS as error:
        print(f"ml-patterns compare: error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(table))
