"""The parent process of ``ml-patterns compare``: prepare, launch the workers, show their progress,
compare, report.

Each timed run (each backend's, torch.compile's) trains in a subprocess of its own (``worker``), so
its timings and peak memory are its own, not the other framework's thread pools or allocations;
they run one after the other, each with the machine to itself, the torch worker first (it writes
the initial weights the JAX worker reads). Then the verdict's runs of torch, whose time and memory
are not reported, one after the other in ONE more worker process (they would otherwise spend more
time starting Python and torch than training): K times with the weights moved by one ulp at the
start and after every step (the ensemble floor of the verdict), once in float64 (its anchor;
``ml_patterns.verdict``) and, in bf16-mixed, once in float32 (``precision_runs``); each gives
bit for bit what it gives in a process of its own (``worker.run_jobs``). In bf16-mixed JAX's own
float32 run follows, in its own process.
A worker's progress arrives on its stdout as JSON lines and is shown as one live status line per
run (a line per epoch when stdout is not a terminal); its stderr (warnings, errors) passes
straight through (``launch`` runs a worker). Ctrl-C stops the running worker and starts no other,
and no report is written.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ml_patterns.checkpoint import config_from_metadata, load_checkpoint, save_checkpoint
from ml_patterns.errors import UsageError
from ml_patterns.io import private_directory
from ml_patterns.molecules.prepare import prepare_dataset, read_manifest
from ml_patterns.precision import MIXED
from ml_patterns.ulps import INITIAL_ULPS, arrays_off
from ml_patterns_app.compare.launch import machine_load, machine_load_during, probe_gpu, run_worker, run_workers
from ml_patterns_app.compare.pair import PairSpec, prepare_initial_weights
from ml_patterns_app.compare.precision_runs import float32_settings
from ml_patterns_app.compare.report import add_one_device_parity, build_report
from ml_patterns_app.compare.settings import (
    ANCHOR_LABEL,
    BACKENDS,
    CONTENDERS,
    DEFAULT_CONTENDERS,
    ENSEMBLE_LABEL,
    JUDGED,
    LABELS,
    REFERENCE,
    CompareSettings,
    WorkerJob,
    WorkerResult,
    trained_weights_path,
)
from ml_patterns_app.compare.summary import format_summary
from ml_patterns_app.compare.written import FILES, check_report_destination, write_report


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
    data: Path | None,
    out: Path,
    device: str = "auto",
    devices: int = 1,
    compile_cache: Path | None = None,
    *,
    pair: PairSpec | None = None,
    contenders: Sequence[str] = DEFAULT_CONTENDERS,
) -> int:
    """``compare``, printing its summary; returns 0 when the histories agree, 1 when they do not."""
    report = compare(settings, data, out, device, devices, compile_cache, pair=pair, contenders=contenders)
    print("\n" + format_summary(report))
    print(f"\nwrote {out / FILES[0]}, {', '.join(FILES[1:])} ({report['wall_time_s']:.0f} s)")
    return 0 if report["parity"]["passed"] else 1


def compare(
    settings: CompareSettings,
    data: Path | None,
    out: Path,
    device: str = "auto",
    devices: int = 1,
    compile_cache: Path | None = None,
    *,
    pair: PairSpec | None = None,
    contenders: Sequence[str] = DEFAULT_CONTENDERS,
) -> dict:
    """Trains ``settings`` on every backend of ``BACKENDS`` (and torch.compile when ``contenders``
    holds ``"compile"``), writes the report into ``out`` and returns it (``results.json``'s content).

    The workload: the molecule model on the prepared dataset ``data`` (prepared there if it is
    missing), or with ``pair`` your own models and batches (``pair.PairSpec``; ``data`` unused).
    ``devices`` N > 1: each backend trains twice, on one device and data-parallel on N (torch: DDP
    processes; JAX: a mesh of N devices, simulated on a CPU); the parity table compares the two
    N-device runs, and each is also checked against its own one-device run (docs/DISTRIBUTED.md).
    ``compile_cache``: where JAX keeps its compiled programs across runs (``None``: nowhere, every
    run compiles).
    """
    started = time.perf_counter()
    check_contenders(contenders, devices)
    check_report_destination(out, None if pair is not None else data)  # before any training
    manifest = None
    if pair is None:
        if not (data / "manifest.json").is_file():
            print(f"preparing the default dataset in {data} ...", flush=True)
            prepare_dataset(data, progress=True)
        manifest = read_manifest(data)
    device = resolve_device(device)  # once, here: both workers run on the same kind
    runs = [(backend, n) for backend in BACKENDS for n in dict.fromkeys((1, devices))]
    with tempfile.TemporaryDirectory() as scratch:
        initial = Path(scratch) / "initial.safetensors"
        weights = {backend: initial for backend in BACKENDS}  # the molecule models: one file, both read it
        if pair is not None:  # yours: torch's weights, and NNX's transferred from them (before any training)
            weights["jax"] = Path(scratch) / "initial_nnx.safetensors"
            prepare_initial_weights(pair, settings.seed, initial, weights["jax"])
        base = WorkerJob(
            data=str(data) if pair is None else pair.data,
            settings=settings,
            weights=str(initial),
            device=device,
            compile_cache=str(compile_cache) if compile_cache else None,
            pair=None if pair is None else pair.to_dict(),
        )
        results = {}
        for index, (backend, n) in enumerate(runs):
            job = dataclasses.replace(
                base,
                weights=str(weights[backend]),
                write_weights=index == 0 and pair is None,
                devices=n,
                count_flops=index == 0,
                contender=JUDGED[backend],
            )
            results[backend, n] = measured_run(backend, job, Path(scratch) / f"{backend}-{n}.json")
        compared = {backend: results[backend, devices] for backend in BACKENDS}
        if "compile" in contenders:
            job = dataclasses.replace(base, contender="compile", compile_loss=True)
            compared["torch_compile"] = measured_run(
                REFERENCE, job, Path(scratch) / "compile.json", LABELS["torch_compile"]
            )
        # The verdict's runs of the reference (ml_patterns.verdict), on the compared device count:
        # K reruns from the initial weights one ulp off, every weight moved one more ulp after each
        # step, each run its own sign seed; and one in float64.
        # In bf16-mixed the reruns train in it too, from the weights one float32 ulp off as in float32 (precision_runs).
        # Neither time nor memory of these is reported: they run one after the other in one process.
        verdict_runs, ulps = [], INITIAL_ULPS[settings.precision]
        for k in range(settings.floor_runs):
            moved = one_ulp_weights(initial, Path(scratch) / f"one_ulp_{k}.safetensors", settings.seed + k, ulps)
            job = dataclasses.replace(base, devices=devices, weights=str(moved), rounding_seed=settings.seed + k)
            label = f"{ENSEMBLE_LABEL} {k + 1}/{settings.floor_runs}"
            verdict_runs.append((job, Path(scratch) / f"one_ulp_{k}.json", label))
        in_float32 = dataclasses.replace(base, devices=devices, settings=float32_settings(settings))
        job = dataclasses.replace(in_float32, float64=True)  # float64, no autocast
        verdict_runs.append((job, Path(scratch) / "float64.json", ANCHOR_LABEL))
        # bf16-mixed: each backend's own float32 run, from the same weights and batches (only their
        # numbers are reported: the reference's shares the verdict's process, the other's has its own).
        twins = {
            backend: (
                dataclasses.replace(in_float32, weights=str(weights[backend]), contender=JUDGED[backend]),
                Path(scratch) / f"{backend}-float32.json",
                f"{LABELS[backend]}, float32",
            )
            for backend in (BACKENDS if settings.precision == MIXED else ())
        }
        if twins:
            verdict_runs.append(twins[REFERENCE])
        shared = run_workers(REFERENCE, verdict_runs)
        ensemble, anchor = shared[: settings.floor_runs], shared[settings.floor_runs]
        float32 = {
            backend: shared[-1] if backend == REFERENCE else run_worker(backend, *run) for backend, run in twins.items()
        }
        trained = {  # the trained weights, where the workload saves them (ours: yes; your pair: no)
            backend: path.read_bytes()
            for backend in BACKENDS
            if (path := trained_weights_path(Path(scratch) / f"{backend}-{devices}.json")).is_file()
        }
    check_same_data([*compared.values(), *ensemble, anchor, *float32.values()])
    dataset = None if pair is None else pair.describe()
    report = build_report(settings, manifest, compared, ensemble, anchor, data, dataset=dataset, float32=float32)
    if devices > 1:
        add_one_device_parity(
            report, {backend: (results[backend, 1], results[backend, devices]) for backend in BACKENDS}
        )
    report["wall_time_s"] = time.perf_counter() - started
    write_report(report, out, data if pair is None else None, trained)
    return report


def check_contenders(contenders: Sequence[str], devices: int) -> None:
    """``--contenders``: names of ``CONTENDERS``, eager and jit among them (the pair judged)."""
    unknown = [name for name in contenders if name not in CONTENDERS]
    if unknown:
        raise UsageError(f"--contenders: unknown {unknown}; choose from {', '.join(CONTENDERS)}")
    if not {"eager", "jit"} <= set(contenders):
        raise UsageError(
            "--contenders must hold eager and jit (the two runs judged for agreement), e.g. eager,compile,jit"
        )
    if "compile" in contenders and devices > 1:
        raise UsageError("--contenders compile runs on one device: leave --devices out, or compile out")


def check_same_data(runs: Sequence[WorkerResult]) -> None:
    """Refuses (``UsageError``) runs that trained on different batches (your ``--data`` must give the
    same batches on every call: seed its random draws)."""
    checksums = {run.data_sha256 for run in runs}
    if len(checksums) > 1:
        raise UsageError(
            "--data gave each worker other batches (their checksums differ): the function must return the same "
            "batches on every call; seed its random draws"
        )


def measured_run(backend: str, job: WorkerJob, out: Path, label: str | None = None) -> WorkerResult:
    """``run_worker``, with what else ran on the machine meanwhile (``machine_load_during``)."""
    before = machine_load()
    result = run_worker(backend, job, out, label)
    return dataclasses.replace(result, machine_load=machine_load_during(before, machine_load()))


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


def one_ulp_weights(source: Path, destination: Path, seed: int, ulps: int = 1) -> Path:
    """``source``'s checkpoint with every floating-point entry moved by ``ulps`` ulps of its dtype
    (``ml_patterns.ulps.INITIAL_ULPS`` of the compared precision: one, in every precision)."""
    arrays, metadata = load_checkpoint(source)
    moved = arrays_off(arrays, seed, ulps)
    # Your own torch model's checkpoint holds no ModelConfig (ours does).
    config = None if metadata.get("config") is None else config_from_metadata(metadata, source)
    return save_checkpoint(
        destination,
        moved,
        backend=metadata["backend"],
        model_class=metadata["model_class"],
        config=config,
        versions=metadata["versions"],
    )
