"""Where and how torch runs: the device, the float32 policy, what to record beside a number, peak
memory, and prediction. Every app (``ml-patterns compare``, ``parity``, ``bench``)
and the parity suite go through here rather than setting torch globals themselves.

The contract, documented here once (``jax_impl.runtime`` mirrors it name for name):

- ``device(kind)``: the first ``"cpu"`` or ``"gpu"`` device, or ``None`` where there is none.
- ``select_device(choice)``: ``"auto"`` (a GPU when present), ``"cpu"`` or ``"gpu"`` (a
  ``UsageError`` naming what to install when there is none).
- ``set_precision(policy)`` / ``precision_policy(policy)``: a float32 matmul policy of
  ``ml_patterns.parity.PRECISIONS`` for the process, or for a block. ``"float32"`` (full float32,
  TF32 off) is what parity needs; ``precision()`` reads the settings in force back.
- ``describe(device)``: ``{"device": {"kind", "name"}, "versions", "threads", "precision"}``, JSON-ready.
- ``reset_peak_memory(device)`` / ``peak_memory(device)``: the most the framework's allocator held
  on ``device`` since the reset, ``{"bytes", "how", "measure": "allocator peak"}``, or ``None``
  where it keeps no statistics (CPU).
- ``to_device(batch, device)``: a batch of numpy arrays as the framework's arrays on ``device``,
  as the trainer's step takes it (the trainers' own ``training.to_device``).
- ``wait(device, value=None)``: blocks until the work queued on ``device`` (or producing ``value``) is done.
- ``release_memory()``: frees cached device memory between measurements.
- ``predict(model, batch, device, task=None)``: the model's outputs on a numpy batch as numpy,
  in eval mode (dropout off); the model is left in eval mode.
- ``enable_compile_cache(directory)``: keeps what the framework compiles in ``directory``, for the
  next process to load instead of compiling (JAX: every jitted program, however small). The
  directory must belong to the user and be writable by nobody else: a compiled program read from
  it is run as is. Returns what it did, for the record; torch eager compiles nothing, so here it
  does nothing (``torch.compile`` keeps its own cache, ``TORCHINDUCTOR_CACHE_DIR``).
- ``padded_batch_rows(batch_size)``: the rows a trainer should pad every batch to
  (``Trainer(pad_batches_to=...)``), or ``None`` to run batches as they come. Eager torch runs any
  shape at no extra cost, so ``None``; JAX compiles a program per batch shape, so a short last
  batch padded to the full size runs the full batches' program.
- ``environment.process_environment(devices, kind)`` (a module of its own, importable without the
  framework): environment variables a process must have before the framework starts, to run on
  ``devices`` devices of ``kind``.
- ``run_data_parallel(fn, devices, choice, *args)``: ``fn(context, *args)`` data-parallel over
  ``devices`` devices of ``select_device(choice)``'s kind, ``context`` the backend's
  ``distributed.Context`` (``None`` for one device: ``fn`` runs here). torch: one DDP process
  per device (``distributed.launch``); JAX: one mesh in this process.
- ``gather_model(model, device)``: after data-parallel training, the model's weights on ``device``.
- ``compile_loss(model)``: the framework's optional compiler on the model's loss, for compare's
  compiled contender (torch: ``torch.compile``); a framework whose steps are always compiled raises.
- ``count_step_flops(model, batch, device)``: ``{"flops", "counter"}``, one training step's forward
  and backward FLOPs on a numpy batch, the run's model untouched; ``counter`` says what counted them
  (the two frameworks' counters count different things: compare reports which one it used).

What the benchmarks (``ml_patterns_bench``) and the GPU check time and probe, the same calls on both:

- ``set_threads(threads)``: the intra-op threads of this process's work from now on.
- ``to_numpy(value)``: one array of the framework's, on any device, as numpy.
- ``bare_train_step(trainer)``: ``(step, wait)``, the Trainer's own train step as a function of a
  device batch (returning the loss on the device), without the Trainer's loop around it; ``wait()``
  blocks until the queued steps are done.
- ``matmul(a, b, device)``: ``(call, wait, compile_s)``, ``call()`` the product of two numpy
  matrices (float32 or bfloat16) on ``device``, as the framework runs its best-case matmul;
  ``compile_s`` the seconds compiling it took apart (``None`` where nothing compiles).
- ``step_sync_guard(trainer)``: a context in which a host sync inside the trainer's steps raises
  (on a GPU the framework's own sync check; on a CPU, which never syncs, the analogue: the
  operations that would sync on a GPU refused).
- ``optimizer_state_on(trainer, device)``: whether the optimizer's state lies where its step reads it.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch

from ml_patterns.callbacks import Callback
from ml_patterns.errors import UsageError
from torch_impl.precision import autocast
from torch_impl.precision import precision_policy as precision_policy
from torch_impl.precision import set_precision as set_precision
from torch_impl.state import one_ulp_off, tensor_to_numpy, tree_to_numpy
from torch_impl.training import to_device
from torch_impl.training_state import adam_step_device


def device(kind: str) -> torch.device | None:
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "gpu":
        return torch.device("cuda") if torch.cuda.is_available() else None
    raise UsageError(f"unknown device kind {kind!r}: use 'cpu' or 'gpu'")


def select_device(choice: str = "auto") -> torch.device:
    if choice == "auto":
        return device("gpu") or device("cpu")
    found = device(choice)
    if found is None:
        raise UsageError(f"--device {choice}: torch sees no CUDA GPU (install torch's CUDA build on a GPU machine)")
    return found


def precision() -> dict:
    return {
        "torch.get_float32_matmul_precision()": torch.get_float32_matmul_precision(),
        "torch.backends.cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "torch.backends.cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def describe(dev: torch.device) -> dict:
    gpu = dev.type == "cuda"
    tf32 = torch.backends.cuda.matmul.allow_tf32
    return {
        "device": {
            "kind": "gpu" if gpu else "cpu",
            "name": torch.cuda.get_device_name(dev) if gpu else f"CPU ({os.cpu_count()} cores)",
        },
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda},
        "threads": torch.get_num_threads(),
        "precision": f"float32; TF32 {'on' if tf32 else 'off'}" if gpu else "float32",
    }


def reset_peak_memory(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_memory(dev: torch.device) -> dict | None:
    if dev.type == "cuda":
        return {
            "bytes": torch.cuda.max_memory_allocated(dev),
            "how": "torch allocator peak, torch.cuda.max_memory_allocated",
            "measure": "allocator peak",
        }
    return None  # torch keeps no CPU allocator statistics


def wait(dev: torch.device, value: object = None) -> None:
    if dev.type == "cuda":  # CPU ops run synchronously
        torch.cuda.synchronize(dev)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@torch.no_grad()
def predict(
    model: torch.nn.Module, batch: Mapping, dev: torch.device, task: str | None = None
) -> dict[str, np.ndarray]:
    """``model(batch)`` (``batch``: numpy arrays, ``ml_patterns.molecules.batches``) as numpy arrays."""
    model.eval()
    outputs = model(to_device(batch, dev), **({} if task is None else {"task": task}))
    return tree_to_numpy(outputs)


def enable_compile_cache(directory: str | os.PathLike) -> dict:
    return {"compile_cache": None, "why": "torch eager compiles nothing"}


def padded_batch_rows(batch_size: int) -> int | None:
    return None


def compile_loss(model: torch.nn.Module) -> None:
    """The compiled contender of ``ml-patterns compare``: ``model.compute_loss`` compiled by
    ``torch.compile``, the Trainer left as it is (it calls ``compute_loss``; the backward pass is
    compiled with it, by AOTAutograd)."""
    model.compute_loss = torch.compile(model.compute_loss)


def count_step_flops(model: torch.nn.Module, batch: Mapping, dev: torch.device) -> dict:
    """The FLOPs of one training step's forward and backward pass on ``batch`` (numpy):
    ``{"flops": float, "counter": what counted them}``. Counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions: what dominates;
    elementwise work is not counted) on a copy of ``model``, so that the run's model (its BatchNorm
    statistics, its gradients) is not touched. The optimizer's update is not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    twin = copy.deepcopy(model).train()
    counter = FlopCounterMode(display=False)
    with counter:
        twin.compute_loss(to_device(batch, dev)).backward()
    return {"flops": float(counter.get_total_flops()), "counter": "torch's FlopCounterMode (matmuls, convolutions)"}


def float64_reference(model: torch.nn.Module, prepare: Callable) -> tuple[torch.nn.Module, Callable]:
    """``model`` and its batch preparation in float64 (``state.float64_twin``): the reference run
    that the verdict's float64 anchor measures both float32 sides against (``ml_patterns.verdict``)."""
    from torch_impl.state import float64_batch, float64_twin

    return float64_twin(model), lambda *args, **kwargs: float64_batch(prepare(*args, **kwargs))


class RoundingNoise(Callback):
    """Moves every weight one ulp, up or down at random (signs from ``seed``), after every optimizer
    step (``state.one_ulp_off``): a run of the verdict's ensemble (``ml_patterns.verdict``)."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def on_batch_end(self, batch_idx: int, trainer, loss) -> None:
        one_ulp_off(trainer.model, self.generator)


def rounding_noise(seed: int) -> Callback:
    """The callback that makes a run one of the verdict's ensemble (``RoundingNoise``)."""
    return RoundingNoise(seed)


def run_data_parallel(fn: Callable, devices: int, choice: str, *args) -> None:
    if devices == 1:
        fn(None, *args)
        return
    from torch_impl import distributed

    gpu = choice == "gpu" or (choice == "auto" and torch.cuda.device_count() >= devices)
    distributed.launch(fn, devices, *args, backend="nccl" if gpu else "gloo")


def gather_model(model: torch.nn.Module, dev: torch.device) -> None:
    model.to(dev)  # DDP keeps rank 0's module whole: its weights are the model's


# -- what the benchmarks and the GPU check time and probe (the contract above) --------------------
def to_numpy(value: torch.Tensor) -> np.ndarray:
    return tensor_to_numpy(value)


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def bare_train_step(trainer) -> tuple[Callable[[Mapping], torch.Tensor], Callable[[], None]]:
    """zero_grad, ``compute_loss`` under the trainer's autocast, backward, the optimizer's step."""
    model, optimizer = trainer.model, trainer.optimizer

    def step(batch: Mapping) -> torch.Tensor:
        optimizer.zero_grad()
        with autocast(trainer.precision, trainer.device):
            loss = model.compute_loss(batch)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step, lambda: wait(trainer.device)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def matmul(
    a: np.ndarray, b: np.ndarray, dev: torch.device
) -> tuple[Callable[[], torch.Tensor], Callable[[], None], None]:
    """Eager ``torch.matmul`` into one preallocated output: the allocator is not what is timed."""
    dtype = _DTYPES[a.dtype.name]
    ta, tb = (torch.from_numpy(x.astype(np.float32)).to(dev, dtype) for x in (a, b))
    out = torch.empty((a.shape[0], b.shape[1]), dtype=dtype, device=dev)

    def call() -> torch.Tensor:
        return torch.matmul(ta, tb, out=out)

    return call, lambda: wait(dev), None


# Tensor methods that read a value on the host: each a sync on a GPU (the CPU analogue's guard).
HOST_READS = ("item", "__bool__", "tolist", "cpu", "numpy")


@contextlib.contextmanager
def step_sync_guard(trainer) -> Iterator[None]:
    """Around each of the trainer's steps (not its epoch's end, which reads the mean loss on
    purpose): ``torch.cuda.set_sync_debug_mode("error")`` on a GPU; on the CPU the ``HOST_READS``
    made to raise."""
    step = trainer._train_step
    guard = _cuda_sync_errors if trainer.device.type == "cuda" else _host_reads_raise

    def guarded(batch):
        with guard():
            return step(batch)

    trainer._train_step = guarded
    try:
        yield
    finally:
        trainer._train_step = step


@contextlib.contextmanager
def _cuda_sync_errors() -> Iterator[None]:
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@contextlib.contextmanager
def _host_reads_raise() -> Iterator[None]:
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def refuse(name):
        def raising(self, *args, **kwargs):
            raise RuntimeError(f"Tensor.{name} inside the training step: a host sync on a GPU")

        return raising

    for name in HOST_READS:
        setattr(torch.Tensor, name, refuse(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def optimizer_state_on(trainer, dev: torch.device) -> bool:
    """Adam's ``step`` where ``training_state.adam_step_device`` says its implementation reads it, the
    moments beside their parameters."""
    optimizer = trainer.optimizer.optimizer
    (group,) = optimizer.param_groups
    for parameter in group["params"]:
        for key, value in optimizer.state[parameter].items():
            where = adam_step_device(group, parameter) if key == "step" else parameter.device
            if torch.is_tensor(value) and value.device != where:
                return False
    return True
