"""One backend's training runs for ``ml-patterns compare``, in a process of their own.

    python -m ml_patterns_app.compare.worker BACKEND JOB_JSON OUT_JSON [JOB_JSON OUT_JSON ...]

Each run's job (``WorkerJob``) is trained in turn, its result (history, every step's loss, epoch
times, test metrics, device, versions, peak memory) written to its own OUT_JSON. A timed run has
a process to itself (its time and memory are its own); the verdict's untimed runs of the
reference share one (``run_jobs``: nothing of one run reaches the next). The first worker builds
the model and writes the initial weights (a portable checkpoint); the next ones read them, so both
backends start from the same weights. Progress goes to stdout as one JSON object per line (a
``run`` event as each run starts, then ``ProgressEvents``), which the parent renders; anything
else a worker prints goes to stderr.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ml_patterns.callbacks import Callback
from ml_patterns.machine import cpu_count, restrict_cpus
from ml_patterns.verdict import global_norm
from ml_patterns_app.compare.pair import pair_workload
from ml_patterns_app.compare.settings import WorkerJob, WorkerResult, trained_weights_path
from ml_patterns_app.compare.workload import molecule_workload

# A status line at most this often: reading the loss is a host sync.
REFRESH_S = 0.5


def emit(event: str, **fields) -> None:
    """One progress event on stdout, for the parent (``runner``) to render."""
    print(json.dumps({"event": event, **fields}), flush=True)


class ProgressEvents(Callback):
    """Epoch, batch, loss and steps/s as JSON lines, at most every ``REFRESH_S`` seconds."""

    def __init__(self, epochs: int, batches: int):
        self.epochs, self.batches = epochs, batches

    def on_epoch_start(self, epoch: int, trainer) -> None:
        self._epoch, self._start, self._last, self._steps = epoch, time.perf_counter(), 0.0, 0

    def on_batch_end(self, batch_idx: int, trainer, loss) -> None:
        self._steps += 1
        now = time.perf_counter()
        if now - self._last >= REFRESH_S:
            self._last = now
            emit(
                "batch",
                epoch=self._epoch,
                epochs=self.epochs,
                batch=batch_idx + 1,
                batches=self.batches,
                loss=float(loss),
                steps_per_s=self._steps / max(now - self._start, 1e-9),
            )

    def on_epoch_end(self, epoch: int, trainer, metrics) -> None:
        emit(
            "epoch",
            epoch=epoch,
            epochs=self.epochs,
            seconds=time.perf_counter() - self._start,
            **{k: v for k, v in metrics.items() if isinstance(v, float)},
        )


class StepLosses(Callback):
    """Every step's training loss, for the noise-floor verdict. Kept on the device during the epoch
    and read once at its end: no host sync per step."""

    def __init__(self):
        self.losses: list[float] = []
        self._pending: list = []

    def on_batch_end(self, batch_idx: int, trainer, loss) -> None:
        self._pending.append(loss)

    def on_epoch_end(self, epoch: int, trainer, metrics) -> None:
        self.losses += [float(loss) for loss in self._pending]
        self._pending = []


class EpochRecord(Callback):
    """At each epoch's end: the programs compiled for the steps so far (an epoch that compiled
    nothing new is at steady state), the 1-minute load average and the weights' global norm (the
    verdict's norm test, ``ml_patterns.verdict``; ``to_numpy``: the backend's ``state.tree_to_numpy``).
    The epoch's time is the trainer's own (``epoch_times``), ended by the epoch's one host sync: no
    step is waited for, so the device runs at its own pace, the host queueing ahead (``speed.steady_state``)."""

    def __init__(self, to_numpy):
        self.to_numpy = to_numpy
        self.compilations: list[int | None] = []
        self.load: list[float] = []
        self.weight_norms: list[float] = []

    def on_epoch_end(self, epoch: int, trainer, metrics) -> None:
        self.compilations.append(trainer.compilations())
        self.load.append(os.getloadavg()[0])
        self.weight_norms.append(global_norm(self.to_numpy(trainer.snapshot_weights())))


def run_jobs(backend: str, runs: Sequence[tuple[WorkerJob, Path]]) -> None:
    """Each ``(job, out)`` of ``runs`` in turn, as a process of its own would run it: a ``run`` event
    (its ``index``), then ``_train``; with ``job.devices`` N > 1, data-parallel (docs/DISTRIBUTED.md)
    as the backend's ``runtime.run_data_parallel`` does it (torch: N DDP processes, fresh for each
    run; JAX: one mesh, the parent setting ``environment.process_environment``). Rank 0 alone
    reports progress and writes ``out``. The jobs share this process's CPUs and devices (the
    parent's ``launch.run_workers`` checks that they ask for the same). Nothing of a run reaches the
    next: the framework's global RNG starts each from the seed this process started with
    (``{backend}_side.rng_reseeder``), each run sets its precision policy and builds its own model,
    loaders, optimizer and callbacks, and what a run froze out of the collector's reach is freed
    after it."""
    threads = runs[0][0].settings.threads or cpu_count()
    # Before the framework loads: XLA sizes its thread pool from the CPUs this process may use, and
    # torch's OpenMP its thread count; DDP's rank processes inherit the mask (docs/PERFORMANCE.md).
    with restrict_cpus(threads) as cpus:
        runtime = importlib.import_module(f"{backend}_impl.runtime")
        reseed_rng = importlib.import_module(f"ml_patterns_app.compare.{backend}_side").rng_reseeder()
        for index, (job, out) in enumerate(runs):
            emit("run", index=index)
            reseed_rng()
            runtime.run_data_parallel(_train, job.devices, job.device, backend, job, cpus, out)
            gc.unfreeze()  # what _train froze (its model, data, optimizer) is garbage now
            runtime.release_memory()


def _train(distributed, backend: str, job: WorkerJob, cpus: dict, out: Path) -> None:
    """The run, on one device (``distributed`` None) or as one rank of ``distributed``; ``cpus``:
    ``restrict_cpus``'s record."""
    impl = importlib.import_module(f"{backend}_impl")
    for module in ("data", "molecules.models", "runtime", "state", "training"):
        importlib.import_module(f"{backend}_impl.{module}")
    runtime = impl.runtime
    runtime.set_precision("float32")  # parity needs full float32 on both sides (docs/PARITY.md)
    device = runtime.select_device(job.device)
    cache = runtime.enable_compile_cache(job.compile_cache) if job.compile_cache else {}
    settings = job.settings
    build = molecule_workload if job.pair is None else pair_workload
    workload = build(impl, runtime, job, job.devices, device)
    model, transform = workload.model, workload.transform
    if job.float64:  # the float64 anchor of the verdict (ml_patterns.verdict): the reference, in float64
        model, transform = runtime.float64_reference(model, transform or _as_is)
    flops = runtime.count_step_flops(model, workload.first_batch(), device) if job.count_flops else {}
    if job.compile_loss:
        runtime.compile_loss(model)
    main = distributed is None or distributed.is_main
    runtime.reset_peak_memory(device)
    step_losses = StepLosses()
    timer = EpochRecord(impl.state.tree_to_numpy)
    steps = workload.steps_per_epoch
    callbacks = [timer, ProgressEvents(settings.epochs, steps), step_losses] if main else [step_losses]
    if job.rounding_seed is not None:  # a run of the verdict's ensemble: every weight one ulp off after each step
        callbacks.append(runtime.rounding_noise(job.rounding_seed))
    trainer = impl.training.Trainer(
        model,
        settings.optimizer(steps * settings.epochs),
        callbacks,
        device=None if distributed is not None else device,
        batch_transform=transform,
        distributed=distributed,
        pad_batches_to=workload.pad_rows,
        precision=settings.precision,
    )
    # Everything alive now (the frameworks, the model, the data) lives until the run ends: moved out
    # of the collector's generations, it is not rescanned by the collections JAX's tracing sets off
    # (docs/PERFORMANCE.md); run_jobs gives it back to the collector after the run.
    gc.freeze()
    trainer.fit(workload.train_loader, workload.val_loader, settings.epochs)
    if not main:
        return
    if distributed is not None:
        runtime.gather_model(trainer.model, device)
    if workload.save_trained is not None and not job.float64:  # beside OUT: the runner puts them in the report
        workload.save_trained(trainer.model, trained_weights_path(out))
    emit("status", text="evaluating on the test split")
    result = WorkerResult(
        history=trainer.history.as_dict(),
        step_losses=step_losses.losses,
        epoch_times=trainer.epoch_times,
        epoch_compilations=timer.compilations,
        load_during=timer.load,
        weight_norms=timer.weight_norms,
        steps_per_epoch=steps,
        samples_per_epoch=workload.samples_per_epoch,
        compilations=trainer.compilations(),
        compile_cache=cache,
        cpus=cpus,
        test_metrics={} if job.float64 else workload.test_metrics(trainer.model),
        devices=job.devices,
        contender=job.contender,
        flops_per_step=flops.get("flops"),
        flops_counter=flops.get("counter", ""),
        **workload.record,
        **runtime.describe(device),
        **_peak_memory(runtime, device),
    )
    out.write_text(result.to_json())


def _as_is(batch, epoch: int, index: int, *, train: bool):
    return batch


def _peak_memory(runtime, device) -> dict:
    measured = runtime.peak_memory(device)
    if measured is not None:
        return {"peak_memory_bytes": measured["bytes"], "peak_memory_kind": measured["how"]}
    # ru_maxrss is in KiB on Linux: the worker's whole process, framework and data included.
    return {
        "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_memory_kind": "process peak RSS",
    }


def probe(backend: str) -> dict:
    """What ``backend`` sees on this machine: ``{"gpu": the first GPU's name, or None}``."""
    runtime = importlib.import_module(f"{backend}_impl.runtime")
    gpu = runtime.device("gpu")
    return {"gpu": None if gpu is None else runtime.describe(gpu)["device"]["name"]}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--probe":  # the parent's device check (runner.resolve_device)
        print(json.dumps(probe(sys.argv[2])))
        sys.exit(0)
    if len(sys.argv) < 4 or len(sys.argv) % 2:
        raise SystemExit(
            "usage: python -m ml_patterns_app.compare.worker BACKEND JOB_JSON OUT [JOB_JSON OUT ...] "
            "(run `ml-patterns compare` instead)"
        )
    from ml_patterns.user_errors import USER_ERRORS

    try:
        jobs = [(WorkerJob.from_json(job), Path(out)) for job, out in zip(sys.argv[2::2], sys.argv[3::2], strict=True)]
        run_jobs(sys.argv[1], jobs)
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the terminal: the parent reports it
        sys.exit(130)
    except USER_ERRORS as error:  # e.g. --device gpu without one: one line, as the CLI prints it
        print(f"ml-patterns compare ({sys.argv[1]} worker): error: {error}", file=sys.stderr)
        sys.exit(2)
