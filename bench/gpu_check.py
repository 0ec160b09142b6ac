"""A ten-minute check that this project is right on a GPU machine, run first on a fresh one.

    python -m ml_patterns_bench.gpu_check [--data DIR] [--out DIR] [--dry-run]

It checks, and prints as it goes: both frameworks on the GPU; no host sync inside a training step
(torch under ``torch.cuda.set_sync_debug_mode("error")``, JAX under ``jax.transfer_guard("disallow")``);
which scaled-dot-product-attention kernel torch ran; the float32 policy honoured and what TF32 gives
(a matmul's error against float64 and its GFLOP/s under each); compare's parity on the GPU (a short
``ml-patterns compare``); a resumed run against the uninterrupted one on the GPU; and the rows of
``ml-patterns bench --quick --device gpu``. The report (``gpu_check.md``, ``gpu_check.json``) goes
to ``--out``, by default ``bench/results/gpu-check-DATE`` when run from the repository root.

``--dry-run`` runs on the CPU, so CI knows the script starts: every check runs its CPU analogue or
reports "skipped: no GPU". Exit status: 0 when no check failed, 1 otherwise, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from jax_impl.environment import memory_environment

os.environ.update(memory_environment())  # before JAX starts: no 75% preallocation beside torch

import jax_impl.runtime  # noqa: E402
import torch_impl.runtime  # noqa: E402
from ml_patterns.errors import UsageError  # noqa: E402
from ml_patterns.molecules.prepare import prepare_dataset, read_manifest  # noqa: E402

from . import gpu_probes  # noqa: E402

RUNTIMES = {"torch": torch_impl.runtime, "jax": jax_impl.runtime}
SKIPPED = "skipped: no GPU"
# A float32 matmul's error relative to |a| @ |b| below this: no TF32 (precision_policy).
FLOAT32_ERROR = 1e-5
# Seconds the bench subprocess may take: the whole check must fit in ten minutes.
BENCH_TIMEOUT_S = 300


@dataclasses.dataclass
class Check:
    """One check's outcome: ``status`` is ``pass``, ``fail``, ``info`` (measured, nothing to judge)
    or ``skipped``; ``detail`` one line; ``data`` what was measured."""

    name: str
    status: str
    detail: str
    data: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class Context:
    kind: str  # "gpu", or "cpu" for --dry-run
    data: Path
    out: Path
    devices: dict  # framework -> its device of ``kind``


def frameworks(ctx: Context) -> Check:
    seen = {name: runtime.device("gpu") for name, runtime in RUNTIMES.items()}
    names = {name: None if dev is None else runtime_name(name, dev) for name, dev in seen.items()}
    if ctx.kind == "cpu":
        return Check("both frameworks on the GPU", "skipped", f"{SKIPPED} (GPUs seen: {names})", names)
    missing = [name for name, dev in seen.items() if dev is None]
    if missing:
        return Check("both frameworks on the GPU", "fail", f"no GPU for {missing}: {names}", names)
    return Check("both frameworks on the GPU", "pass", "; ".join(f"{k}: {v}" for k, v in names.items()), names)


def runtime_name(framework: str, dev) -> str:
    return RUNTIMES[framework].describe(dev)["device"]["name"]


def host_syncs(ctx: Context) -> Check:
    manifest = read_manifest(ctx.data)
    found = {name: gpu_probes.step_syncs(name, ctx.data, manifest, ctx.devices[name]) for name in RUNTIMES}
    failed = {k: v for k, v in found.items() if v is not None}
    how = (
        "torch: torch.cuda.set_sync_debug_mode('error') in every step"
        if ctx.kind == "gpu"
        else "torch (CPU analogue): Tensor.item/__bool__/tolist/cpu/numpy made to raise in every step"
    ) + "; jax: an epoch under jax.transfer_guard('disallow')"
    if failed:
        return Check("no host sync per step", "fail", f"{failed} ({how})", found)
    return Check("no host sync per step", "pass", f"0 syncs per step on both sides ({how})", found)


def sdpa_kernel(ctx: Context) -> Check:
    kernels = gpu_probes.attention_kernels(ctx.data, read_manifest(ctx.data), ctx.devices["torch"])
    fused = [k for k in kernels if any(word in k for word in ("flash", "efficient", "cudnn"))]
    detail = f"torch ran {kernels or 'no SDPA op'}"
    if ctx.kind == "cpu":
        return Check("SDPA kernel", "info", detail + " (CPU analogue)", {"kernels": kernels})
    return Check("SDPA kernel", "pass" if fused else "info", detail, {"kernels": kernels, "fused": fused})


def precision_policy(ctx: Context) -> Check:
    measured = {
        framework: {
            policy: gpu_probes.matmul_under(framework, policy, ctx.devices[framework], ctx.kind)
            for policy in (("float32", "tf32") if ctx.kind == "gpu" else ("float32",))
        }
        for framework in RUNTIMES
    }
    # Relative to |a| @ |b|: float32 arithmetic stays within a few float32 ulps (6e-8 each), TF32's
    # 10-bit mantissa rounds every input by up to 5e-4. The line between them is two decades from each.
    honoured = all(m["float32"]["max_rel_error"] < FLOAT32_ERROR for m in measured.values())
    summary = "; ".join(
        f"{framework} "
        + ", ".join(f"{p}: err {r['max_rel_error']:.1e}, {r['gflops']:.0f} GFLOP/s" for p, r in rows.items())
        for framework, rows in measured.items()
    )
    if ctx.kind == "cpu":
        summary += " (CPU analogue; TF32 is a GPU format: skipped)"
    else:
        engaged = {f: m["tf32"]["max_rel_error"] >= FLOAT32_ERROR for f, m in measured.items()}
        summary += f"; TF32 engaged under the tf32 policy: {engaged}"
    return Check("float32 policy honoured", "pass" if honoured else "fail", summary, measured)


def compare_parity(ctx: Context) -> Check:
    if ctx.kind == "cpu":
        return Check("compare's parity on the GPU", "skipped", SKIPPED)
    from ml_patterns_app.compare.runner import run_compare
    from ml_patterns_app.compare.settings import CompareSettings

    out = ctx.out / "compare"
    settings = CompareSettings(epochs=2, max_train_molecules=512)
    status = run_compare(settings, ctx.data, out, device="gpu")
    results = json.loads((out / "results.json").read_text())
    devices = {b: results["backends"][b]["device"]["name"] for b in results["backends"]}
    detail = f"{results['verdict']} (devices: {devices}; report: {out / 'report.md'})"
    return Check("compare's parity on the GPU", "pass" if status == 0 else "fail", detail, {"devices": devices})


def resume(ctx: Context) -> Check:
    manifest = read_manifest(ctx.data)
    found = {
        name: gpu_probes.resume_against_uninterrupted(name, ctx.data, manifest, ctx.devices[name], ctx.kind)
        for name in RUNTIMES
    }
    failed = [framework for framework, r in found.items() if not r["within_tolerance"] or not r["state_on_device"]]
    detail = "; ".join(
        f"{framework}: {'bit-exact' if r['bit_exact'] else 'max rel diff ' + format(r['max_rel_diff'], '.1e')}"
        f"{'' if r['state_on_device'] else ', optimizer state NOT on the parameters device'}"
        for framework, r in found.items()
    )
    suffix = "" if ctx.kind == "gpu" else " (CPU analogue)"
    return Check("resume on the device", "fail" if failed else "pass", detail + suffix, found)


def bench_rows(ctx: Context) -> Check:
    if ctx.kind == "cpu":
        return Check("bench --quick --device gpu", "skipped", SKIPPED)
    out = ctx.out / "bench"
    command = [sys.executable, "-m", "ml_patterns_app.cli", "bench", "--quick", "--device", "gpu"]
    command += ["--data", str(ctx.data), "--out", str(out)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return Check("bench --quick --device gpu", "fail", f"did not finish in {BENCH_TIMEOUT_S} s")
    table = done.stdout.strip()
    status = "pass" if done.returncode == 0 else "fail"
    detail = f"exit status {done.returncode}; report in {out}" + ("" if status == "pass" else f": {done.stderr[-500:]}")
    return Check("bench --quick --device gpu", status, detail, {"table": table})


CHECKS: tuple[Callable[[Context], Check], ...] = (
    frameworks,
    host_syncs,
    sdpa_kernel,
    precision_policy,
    compare_parity,
    resume,
    bench_rows,
)


def run_checks(ctx: Context, stream=None) -> list[Check]:
    """Every check in turn, each printed (to ``stream``, by default ``sys.stdout`` as it is when
    called) as it ends; a check that raises is a failure, not the end."""
    stream = stream or sys.stdout
    checks = []
    for check in CHECKS:
        start = time.perf_counter()
        try:
            outcome = check(ctx)
        except Exception as error:  # reported with its type; the other checks still run
            outcome = Check(check.__name__, "fail", f"raised {type(error).__name__}: {error}")
        outcome.seconds = time.perf_counter() - start
        print(f"[{outcome.status.upper():7}] {outcome.name}: {outcome.detail} ({outcome.seconds:.0f} s)", file=stream)
        stream.flush()
        checks.append(outcome)
    return checks


def write_report(ctx: Context, checks: list[Check]) -> None:
    ctx.out.mkdir(parents=True, exist_ok=True)
    record = {
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "kind": ctx.kind,
        "describe": {name: RUNTIMES[name].describe(dev) for name, dev in ctx.devices.items()},
        "checks": [dataclasses.asdict(check) for check in checks],
    }
    (ctx.out / "gpu_check.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    lines = [f"# GPU check ({ctx.kind}{', dry run on the CPU' if ctx.kind == 'cpu' else ''})", ""]
    lines += [f"- {name}: {info['device']['name']}, {info['versions']}" for name, info in record["describe"].items()]
    lines += ["", "| check | result | detail | seconds |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {c.status} | {c.detail} | {c.seconds:.0f} |" for c in checks]
    (ctx.out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def default_out(kind: str) -> Path:
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    folder = f"gpu-check-{date}" if kind == "gpu" else f"gpu-check-dry-run-{date}"
    results = Path("bench/results")
    return results / folder if results.is_dir() else Path(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml_patterns_bench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/nci"), help="a prepared dataset (prepared if missing)")
    parser.add_argument("--out", type=Path, default=None, help="where gpu_check.md and gpu_check.json go")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU: CPU analogues, GPU-only checks skipped")
    args = parser.parse_args(argv)
    kind = "cpu" if args.dry_run else "gpu"
    devices = {name: runtime.device(kind) for name, runtime in RUNTIMES.items()}
    if kind == "gpu" and None in devices.values():
        missing = [name for name, dev in devices.items() if dev is None]
        print(f"gpu_check: error: {missing} see no GPU (use --dry-run on a CPU machine)", file=sys.stderr)
        return 2
    if not (args.data / "manifest.json").is_file():
        print(f"preparing the default dataset in {args.data} ...", flush=True)
        prepare_dataset(args.data, progress=True)
    ctx = Context(kind, args.data, args.out or default_out(kind), devices)
    torch_impl.runtime.set_precision("float32")
    jax_impl.runtime.set_precision("float32")
    checks = run_checks(ctx)
    write_report(ctx, checks)
    print(f"wrote {ctx.out / 'gpu_check.md'}")
    return 1 if any(c.status == "fail" for c in checks) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UsageError as error:
        print(f"gpu_check: error: {error}", file=sys.stderr)
        sys.exit(2)
