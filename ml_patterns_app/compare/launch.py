"""Running one worker of ``ml-patterns compare`` (``python -m ml_patterns_app.compare.worker``) from the
parent: its environment, its progress rendered as a status line (``StatusLine``), Ctrl-C passed on
(``stop``), what else ran on the machine meanwhile (``machine_load``), and asking a backend, in a
process of its own, which GPU it sees (``probe_gpu``). ``runner`` decides which runs to make."""

from __future__ import annotations

import importlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ml_patterns_app.compare.settings import LABELS, WorkerJob, WorkerResult

# Seconds a worker gets to exit after Ctrl-C before it is killed.
STOP_GRACE_S = 5.0


class WorkerFailed(RuntimeError):
    """A worker exited with an error; its traceback was printed on stderr above."""


def probe_gpu(backend: str) -> str | None:
    """The name of the GPU ``backend`` sees in a fresh process, or None (``worker.probe``)."""
    environment = importlib.import_module(f"{backend}_impl.environment")
    env = {**os.environ, **environment.process_environment(1)}
    command = [sys.executable, "-m", "ml_patterns_app.compare.worker", "--probe", backend]
    answer = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if answer.returncode != 0:
        raise WorkerFailed(f"asking {backend} for its devices failed: {answer.stderr.strip()[-2000:]}")
    return json.loads(answer.stdout.strip().splitlines()[-1])["gpu"]


def run_worker(backend: str, job: WorkerJob, out: Path, label: str | None = None) -> WorkerResult:
    """Runs one worker to the end, rendering its progress; its result, read from ``out``."""
    return run_workers(backend, [(job, out, label)])[0]


def run_workers(backend: str, runs: Sequence[tuple[WorkerJob, Path, str | None]]) -> list[WorkerResult]:
    """Runs ``runs`` (each a job, the path its result goes to, its label: ``LABELS[backend]`` when
    None) one after the other in ONE worker process (``worker.run_jobs``), rendering each run's
    progress on a status line of its own, as if each had a process of its own; their results, in
    order. For runs whose time and memory are not measured: they share the process's start, its
    threads and its devices, so every job must ask for the same (``device``, ``devices``,
    ``settings.threads``; a ``ValueError`` otherwise). A failing run stops the rest, and is named."""
    if not runs:
        return []
    first = runs[0][0]
    for job, _, _ in runs:
        if (job.device, job.devices, job.settings.threads) != (first.device, first.devices, first.settings.threads):
            raise ValueError(f"runs of one worker process must share device, devices and threads: {job} vs {first}")
    labels = [(label or LABELS[backend]) + (f" x{job.devices}" if job.devices > 1 else "") for job, _, label in runs]
    run = 0
    status = StatusLine(labels[run], sys.stdout)
    status.show("starting")
    environment = importlib.import_module(f"{backend}_impl.environment")  # framework-free
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **environment.process_environment(first.devices, first.device)}
    command = worker_command(backend, [(job, out) for job, out, _ in runs])
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as process:
        try:
            for line in process.stdout:
                event = status.event(line)
                if event.get("event") == "run" and event["index"] > run:  # the previous run is done
                    status.finish("done")
                    run = event["index"]
                    status = StatusLine(labels[run], sys.stdout)
                    status.show("starting")
            code = process.wait()
        except BaseException:  # Ctrl-C (KeyboardInterrupt) or anything else: the worker must not outlive us
            stop(process)
            status.finish("stopped")
            raise
    if code != 0:
        status.finish(f"failed (exit status {code})")
        raise WorkerFailed(f"the {labels[run]} worker failed (exit status {code}); its error is printed above")
    status.finish("done")
    return [WorkerResult.from_json(out.read_text()) for _, out, _ in runs]


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


def worker_command(backend: str, runs: Sequence[tuple[WorkerJob, Path]]) -> list[str]:
    """``python -m ml_patterns_app.compare.worker BACKEND JOB_JSON OUT [JOB_JSON OUT ...]``."""
    return [
        sys.executable,
        "-m",
        "ml_patterns_app.compare.worker",
        backend,
        *(a for job, out in runs for a in (job.to_json(), str(out))),
    ]


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

    def event(self, line: str) -> dict:
        """Renders one line of the worker's stdout; returns the progress event it is (``{}``: none)."""
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = None
        if not isinstance(event, dict):  # not a progress event: pass it through
            self._print(line.rstrip("\n"))
            return {}
        kind = event.get("event")
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
        return event

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
