"""The parent process of ``ml-patterns compare``: prepare, launch the workers, show their progress,
compare, report.

Each backend trains in its own subprocess (``worker``), so its timings and peak memory are its own,
not the other framework's thread pools or allocations; they run one after the other, each with the
machine to itself, the torch worker first (it writes the initial weights the JAX worker reads),
then torch again: K times with the weights moved by one ulp at the start and after every step
(the ensemble floor of the verdict), and once in float64 (its anchor; ``ml_patterns.verdict``).
A worker's progress arrives on its stdout as JSON lines and is shown as one live status line per
backend (a line per epoch when stdout is not a terminal); its stderr (warnings, errors) passes
straight through. Ctrl-C stops the running worker and starts no other, and no report is written.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ml_patterns.checkpoint import config_from_metadata, load_checkpoint, save_checkpoint
from ml_patterns.errors import UsageError
from ml_patterns.io import private_directory
from ml_patterns.molecules.prepare import prepare_dataset, read_manifest
from ml_patterns.verdict import one_ulp
from ml_patterns_app.compare.report import add_one_device_parity, build_report, format_summary
from ml_patterns_app.compare.settings import (
    ANCHOR_LABEL,
    BACKENDS,
    ENSEMBLE_LABEL,
    LABELS,
    REFERENCE,
    CompareSettings,
    WorkerJob,
    WorkerResult,
)
from ml_patterns_app.compare.worker import trained_weights_path
from ml_patterns_app.compare.written import FILES, check_report_destination, write_report

# Seconds a worker gets to exit after Ctrl-C before it is killed.
STOP_GRACE_S = 5.0


class WorkerFailed(RuntimeError):
    """A worker exited with an error; its traceback was printed on stderr above."""


def default_compile_cache() -> Path:
    """Where compiled programs are kept between runs: the user's cache directory (``$XDG_CACHE_HOME``,
    else ``~/.cache``), ``ml-patterns/jax``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ml-patterns" / "jax"


def check_compile_cache(compile_cache: Path) -> None:
    """Refuses (``UsageError``), before any worker trains, a compile cache another user may write."""
    what = "the compile cache"
    try:
        private_directory(compile_cache, what)
    except UsageError as error:
        raise UsageError(f"{error}, or pass --no-compile-cache") from None
    except OSError as error:  # e.g. $XDG_CACHE_HOME not writable
        raise UsageError(f"cannot create {what} {compile_cache} ({error.strerror}): pass --no-compile-cache") from None


def run_compare(
    settings: CompareSettings,
    data: Path,
    out: Path,
    device: str = "auto",
    devices: int = 1,
    compile_cache: Path | None = None,
) -> int:
    """Trains ``settings`` on every backend of ``BACKENDS``, writes the report into ``out``; returns 0
    when the histories agree, 1 when they do not.

    ``devices`` N > 1: each backend trains twice, on one device and data-parallel on N (torch: DDP
    processes; JAX: a mesh of N devices, simulated on a CPU); the parity table compares the two
    N-device runs, and each is also checked against its own one-device run (docs/DISTRIBUTED.md).
    ``compile_cache``: where JAX keeps its compiled programs across runs (``None``: nowhere, every
    run compiles).
    """
    started = time.perf_counter()
    check_report_destination(out, data)  # before any training: a report that cannot be written costs nothing
    if not (data / "manifest.json").is_file():
        print(f"preparing the default dataset in {data} ...", flush=True)
        prepare_dataset(data, progress=True)
    manifest = read_manifest(data)
    device = resolve_device(device)  # once, here: both workers run on the same kind
    runs = [(backend, n) for backend in BACKENDS for n in dict.fromkeys((1, devices))]
    with tempfile.TemporaryDirectory() as scratch:
        results = {}
        for index, (backend, n) in enumerate(runs):
            job = WorkerJob(
                data=str(data),
                settings=settings,
                weights=str(Path(scratch) / "initial.safetensors"),
                write_weights=index == 0,
                device=device,
                devices=n,
                compile_cache=str(compile_cache) if compile_cache else None,
            )
            before = machine_load()
            result = run_worker(backend, job, Path(scratch) / f"{backend}-{n}.json")
            results[backend, n] = dataclasses.replace(result, machine_load=machine_load_during(before, machine_load()))
        # The verdict's runs of the reference (ml_patterns.verdict), on the compared device count:
        # K reruns from the initial weights one ulp off, every weight moved one more ulp after each
        # step, each run its own sign seed; and one in float64.
        initial = Path(scratch) / "initial.safetensors"
        ensemble = []
        for k in range(settings.floor_runs):
            weights = one_ulp_weights(initial, Path(scratch) / f"one_ulp_{k}.safetensors", settings.seed + k)
            job = dataclasses.replace(
                job, devices=devices, weights=str(weights), write_weights=False, rounding_seed=settings.seed + k
            )
            label = f"{ENSEMBLE_LABEL} {k + 1}/{settings.floor_runs}"
            ensemble.append(run_worker(REFERENCE, job, Path(scratch) / f"one_ulp_{k}.json", label))
        job = dataclasses.replace(job, weights=str(initial), float64=True, rounding_seed=None)
        anchor = run_worker(REFERENCE, job, Path(scratch) / "float64.json", ANCHOR_LABEL)
        trained = {b: trained_weights_path(Path(scratch) / f"{b}-{devices}.json").read_bytes() for b in BACKENDS}
    compared = {backend: results[backend, devices] for backend in BACKENDS}
    report = build_report(settings, manifest, compared, ensemble, anchor, data)
    if devices > 1:
        add_one_device_parity(
            report, {backend: (results[backend, 1], results[backend, devices]) for backend in BACKENDS}
        )
    report["wall_time_s"] = time.perf_counter() - started
    write_report(report, out, data, trained)
    print("\n" + format_summary(report))
    print(f"\nwrote {out / FILES[0]}, {', '.join(FILES[1:])} ({report['wall_time_s']:.0f} s)")
    return 0 if report["parity"]["passed"] else 1


# The one-line install that gives each backend its CUDA 12 build (jax's extra pins the matching jaxlib).
GPU_INSTALL = {
    "torch": "pip install torch --index-url https://download.pytorch.org/whl/cu126",
    "jax": 'pip install "jax[cuda12]=={jax}"',
}


def gpu_install(backend: str) -> str:
    """The command that installs ``backend``'s CUDA 12 build, for the version installed here."""
    try:
        jax = importlib.metadata.version("jax")
    except importlib.metadata.PackageNotFoundError:
        jax = "<your jax version>"
    return GPU_INSTALL[backend].format(jax=jax)


def resolve_device(choice: str) -> str:
    """``--device`` (``auto``, ``cpu``, ``gpu``) as the one kind both workers run on: asks each
    backend, in a process of its own, whether it sees a GPU (``device_kind`` decides)."""
    if choice == "cpu":
        return "cpu"
    return device_kind(choice, {backend: probe_gpu(backend) for backend in BACKENDS})


def probe_gpu(backend: str) -> str | None:
    """The name of the GPU ``backend`` sees in a fresh process, or None (``worker.probe``)."""
    environment = importlib.import_module(f"{backend}_impl.environment")
    env = {**os.environ, **environment.process_environment(1)}
    command = [sys.executable, "-m", "ml_patterns_app.compare.worker", "--probe", backend]
    answer = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if answer.returncode != 0:
        raise WorkerFailed(f"asking {backend} for its devices failed: {answer.stderr.strip()[-2000:]}")
    return json.loads(answer.stdout.strip().splitlines()[-1])["gpu"]


def device_kind(choice: str, gpus: dict[str, str | None]) -> str:
    """The kind both backends run on, from ``gpus`` (each backend's GPU name, or None where it sees
    none): ``gpu`` when every one sees a GPU, ``cpu`` for ``auto`` when none does. Anything else is
    refused (``UsageError``) with the install that fixes it: compare would otherwise rank one
    framework on a GPU against the other on a CPU, or fail in the middle of the run."""
    if choice not in ("auto", "gpu"):
        raise UsageError(f"--device {choice!r}: use auto, cpu or gpu")
    missing = [backend for backend in BACKENDS if gpus[backend] is None]
    if not missing:
        return "gpu"
    if choice == "auto" and len(missing) == len(BACKENDS):
        return "cpu"
    seen = "; ".join(f"{backend} sees {gpus[backend] or 'no GPU'}" for backend in BACKENDS)
    fixes = "; ".join(f"{backend}: {gpu_install(backend)}" for backend in missing)
    refuse = "both must run on the same kind of device" if choice == "auto" else "every backend must see a GPU"
    raise UsageError(f"--device {choice}: {seen}; {refuse}. Install the GPU build ({fixes}), or pass --device cpu")


def one_ulp_weights(source: Path, destination: Path, seed: int) -> Path:
    """``source``'s checkpoint with every floating-point entry moved by one ulp (``ml_patterns.verdict``)."""
    arrays, metadata = load_checkpoint(source)
    rng = np.random.default_rng(seed)
    moved = {
        name: one_ulp(array, rng) if np.issubdtype(array.dtype, np.floating) else array
        for name, array in sorted(arrays.items())
    }
    config = config_from_metadata(metadata, source)
    return save_checkpoint(
        destination,
        moved,
        backend=metadata["backend"],
        model_class=metadata["model_class"],
        config=config,
        versions=metadata["versions"],
    )


def run_worker(backend: str, job: WorkerJob, out: Path, label: str | None = None) -> WorkerResult:
    """Runs one worker to the end, rendering its progress; its result, read from ``out``."""
    command = worker_command(backend, job, out)
    devices = job.devices
    label = (label or LABELS[backend]) + (f" x{devices}" if devices > 1 else "")
    status = StatusLine(label, sys.stdout)
    status.show("starting")
    environment = importlib.import_module(f"{backend}_impl.environment")  # framework-free
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **environment.process_environment(devices, job.device)}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as process:
        try:
            for line in process.stdout:
                status.event(line)
            code = process.wait()
        except BaseException:  # Ctrl-C (KeyboardInterrupt) or anything else: the worker must not outlive us
            stop(process)
            status.finish("stopped")
            raise
    if code != 0:
        status.finish(f"failed (exit status {code})")
        raise WorkerFailed(f"the {label} worker failed (exit status {code}); its error is printed above")
    status.finish("done")
    return WorkerResult.from_json(out.read_text())


def machine_load() -> dict:
    """The 1/5/15-minute load averages, the CPU time of every process on the machine (``/proc/stat``,
    Linux; ``None`` elsewhere) and of this process's finished children (the workers), and the time."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "load_average": list(os.getloadavg()),
        "busy_cpu_s": _busy_cpu_seconds(),
        "children_cpu_s": children.ru_utime + children.ru_stime,
        "time": time.perf_counter(),
    }


def machine_load_during(before: dict, after: dict) -> dict:
    """What else ran while a worker did: the load averages before and after it, and the CPU time
    other processes used meanwhile, as a share of all CPUs (the machine's busy time less the
    worker's own)."""
    record = {"load_average_before": before["load_average"], "load_average_after": after["load_average"]}
    if before["busy_cpu_s"] is not None and after["busy_cpu_s"] is not None:
        wall = after["time"] - before["time"]
        worker = after["children_cpu_s"] - before["children_cpu_s"]
        others = max(0.0, after["busy_cpu_s"] - before["busy_cpu_s"] - worker)
        record["others_cpu_share"] = others / max(wall * (os.cpu_count() or 1), 1e-9)
    return record


def _busy_cpu_seconds() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(value) for value in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def worker_command(backend: str, job: WorkerJob, out: Path) -> list[str]:
    return [sys.executable, "-m", "ml_patterns_app.compare.worker", backend, job.to_json(), str(out)]


def stop(process: subprocess.Popen) -> None:
    """Interrupts a worker (as Ctrl-C would: it shares our terminal, so it usually has the signal
    already), then kills it if it has not exited within ``STOP_GRACE_S``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class StatusLine:
    """One backend's progress: rewritten in place on a terminal, a line per epoch otherwise."""

    def __init__(self, label: str, stream):
        self.label, self.stream = label, stream
        self.live = stream.isatty()
        self.width = 0

    def event(self, line: str) -> None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:  # not a progress event: pass it through
            self._print(line.rstrip("\n"))
            return
        kind = event.pop("event", None)
        if kind == "batch":
            self.show(
                f"epoch {event['epoch'] + 1}/{event['epochs']}  batch {event['batch']}/{event['batches']}  "
                f"loss {event['loss']:.4f}  {event['steps_per_s']:.1f} steps/s"
            )
        elif kind == "epoch":
            losses = "  ".join(f"{k} {v:.4f}" for k, v in event.items() if k.endswith("loss"))
            self._print(f"epoch {event['epoch'] + 1}/{event['epochs']}  {losses}  ({event['seconds']:.1f} s)")
        elif kind == "status":
            self.show(event["text"])

    def show(self, text: str) -> None:
        """A transient status: overwrites the current line on a terminal; not shown otherwise."""
        if self.live:
            text = f"{self.label:<16} {text}"
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()
            self.width = len(text)

    def finish(self, text: str) -> None:
        self._print(text)

    def _print(self, text: str) -> None:
        line = f"{self.label:<16} {text}"
        self.stream.write(("\r" + line.ljust(self.width) if self.live else line) + "\n")
        self.stream.flush()
        self.width = 0
