"""``ml-patterns bench``: runs the registered benchmarks, prints a table, writes bench.json, bench.md
and bench.png.

A run: pin both frameworks to the same CPUs, load them, set the matmul precision policy, measure
each device's matmul peak (``ml_patterns_bench.peak``), run the selected workloads with one ``BenchContext``,
then add GFLOP/s and the fraction of peak to every row that counts its FLOPs.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
from pathlib import Path

from ml_patterns.errors import UsageError
from ml_patterns.io import atomic_write_text
from ml_patterns.machine import cpu_count, environment, restrict_cpus
from ml_patterns.outputs import MARKER, check_output, mark_output
from ml_patterns.precision import MIXED

from .common import CONTENDERS, QUICK_CONTENDERS, BenchContext, peak_key

# name -> the module whose ``run(ctx: BenchContext) -> list[dict]`` returns result rows
# (``ml_patterns_bench.common.result_row``). A module is imported only when it runs, after the CPUs are pinned.
BENCHMARKS = {
    "data": "ml_patterns_bench.data_loading",
    "mlp": "ml_patterns_bench.mlp",
    "collate": "ml_patterns_bench.collate",
    "losses": "ml_patterns_bench.losses",
    "compilations": "ml_patterns_bench.compilations",
    "training": "ml_patterns_bench.training",
    "models": "ml_patterns_bench.models",
    "distributed": "ml_patterns_bench.distributed",
    "compare_model": "ml_patterns_bench.compare_model",
}

# What --quick runs when --only does not say: each at its smallest, a few minutes on 2 cores. Left
# out: compilations (an epoch per padding strategy) and models (a compilation per model and size);
# `--quick --only NAME` still runs them small.
QUICK_BENCHMARKS = ("data", "mlp", "collate", "losses", "training")

REQUIRED = ("benchmark", "workload", "contender", "device")
OPTIONAL = ("flops_per_call", "compile_s", "peak_memory", "detail")


RESULTS_KIND = "folder of benchmark results"
RESULT_FILES = ("bench.json", "bench.md", "bench.png")
# The same files as some earlier versions named them, before results folders were marked.
EARLIER_RESULT_FILES = ("ml_patterns_bench.json", "ml_patterns_bench.md", "ml_patterns_bench.png")


def check_results_destination(out: Path, data: Path) -> None:
    """Refuses (``DestinationError``, one line) an ``--out`` that holds other files than results, the
    dataset read (or a folder holding it), or the working directory: the results never overwrite them."""
    check_output(out, RESULTS_KIND, protect=(data,), recognise=_results_only)


def _results_only(folder: Path) -> bool:
    """Results written before results folders were marked (under either name of their files)."""
    return {entry.name for entry in folder.iterdir()} <= {*RESULT_FILES, *EARLIER_RESULT_FILES, MARKER}


def run_benchmarks(args: argparse.Namespace) -> int:
    selected = list(dict.fromkeys(args.only or (QUICK_BENCHMARKS if args.quick else BENCHMARKS)))
    unknown = sorted(set(selected) - set(BENCHMARKS))
    if unknown:
        raise UsageError(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}")
    check_results_destination(args.out, args.data)  # before any measurement
    if not (args.data / "manifest.json").is_file():
        from ml_patterns.molecules.prepare import prepare_dataset

        prepare_dataset(args.data, progress=False)

    threads = args.threads or cpu_count()
    machine = environment()  # before the run: the load average is other processes' load
    with restrict_cpus(threads) as thread_record:
        # The first framework import: after the CPUs are pinned (XLA sizes its pool from them).
        from . import harness, peak

        devices = harness.resolve_devices(args.device)
        with harness.configured(threads, args.precision) as framework_record:
            ctx = BenchContext(
                data_dir=args.data,
                quick=args.quick,
                devices=devices,
                threads=threads,
                precision=args.precision,
                contenders=QUICK_CONTENDERS if args.quick else tuple(CONTENDERS),
            )
            print(f"measuring the matmul peak on {', '.join(devices)} ...", flush=True)
            rows = peak.measure(ctx)
            for name in selected:
                print(f"running {name} ...", flush=True)
                rows.extend(_checked(name, importlib.import_module(BENCHMARKS[name]).run(ctx)))

    results = [row for row in rows if "skipped" not in row]
    peaks = peak.peaks(results)
    _add_peak_fractions(results, peaks)
    report = {
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "context": ctx.as_dict(),
        "environment": {**machine, **framework_record, "threads": thread_record},
        "matmul_peak_gflops": peaks,
        "results": results,
        "skipped": [row for row in rows if "skipped" in row],
    }
    table = format_table(results)
    summary = format_summary(results) + _precision_summary(results)
    print(table + "\n\n" + summary)
    for row in report["skipped"]:
        print(f"skipped: {_name(row)}: {row['skipped']}")

    from .chart import write_chart  # matplotlib loads only when there is something to draw

    check_results_destination(args.out, args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    mark_output(args.out, RESULTS_KIND)
    json_file, markdown_file, chart_file = RESULT_FILES
    atomic_write_text(args.out / json_file, json.dumps(report, indent=1) + "\n")
    atomic_write_text(args.out / markdown_file, _markdown(report, table, summary))
    write_chart(report, args.out / chart_file)
    print(f"wrote {json_file}, {markdown_file} and {chart_file} to {args.out}")
    return 0


def _checked(name: str, rows: list[dict]) -> list[dict]:
    """Rows as the report needs them; a malformed one is an error naming the benchmark and row."""
    for index, row in enumerate(rows):
        missing = [key for key in REQUIRED if key not in row]
        if "skipped" not in row:
            missing += [key for key in ("timing", "throughput") if key not in row]
        if missing:
            raise ValueError(f"benchmark {name!r} returned row {index} without {missing}: {row}")
        if "skipped" not in row and not row["timing"].get("median_s", 0) > 0:
            raise ValueError(f"benchmark {name!r} row {index} ({_name(row)}) has no positive median time")
        for key in OPTIONAL:
            row.setdefault(key, None)
    return rows


def _add_peak_fractions(results: list[dict], peaks: dict[str, dict[str, float]]) -> None:
    for row in results:
        flops, device_peaks = row.get("flops_per_call"), peaks.get(peak_key(row), {})
        gflops = flops / row["timing"]["median_s"] / 1e9 if flops else None
        contender = CONTENDERS.get(row["contender"])
        own = device_peaks.get(contender.framework) if contender else None
        row["gflops"] = gflops
        row["fraction_of_peak"] = gflops / device_peaks["peak"] if gflops and device_peaks else None
        row["fraction_of_framework_peak"] = gflops / own if gflops and own else None


def _name(row: dict) -> str:
    return f"{row['benchmark']} / {row['workload']} / {row['contender']} / {row['device']}"


COLUMNS = (
    "benchmark",
    "workload",
    "contender",
    "device",
    "median",
    "IQR",
    "throughput",
    "GFLOP/s",
    "of peak",
    "compile",
    "memory",
)


def format_table(results: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in results:
        timing, throughput, memory = row["timing"], row["throughput"], row.get("peak_memory") or {}
        cells = (
            row["benchmark"],
            row["workload"],
            row["contender"],
            row["device"],
            _seconds(timing["median_s"]),
            f"{timing['iqr_s'] / timing['median_s']:.0%}",
            f"{_number(throughput['value'])} {throughput['unit']}",
            _number(row["gflops"]) if row.get("gflops") else "",
            f"{row['fraction_of_peak']:.0%}" if row.get("fraction_of_peak") else "",
            _seconds(row["compile_s"]) if row.get("compile_s") is not None else "",
            _memory(memory),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_summary(results: list[dict]) -> str:
    """Per workload and device: each contender's throughput relative to torch eager, and its
    fraction of the matmul peak where the workload counts FLOPs."""
    groups: dict[tuple, dict[str, dict]] = {}
    for row in results:
        if row["contender"] in CONTENDERS:
            groups.setdefault((row["benchmark"], row["workload"], row["device"]), {})[row["contender"]] = row
    lines = ["| benchmark | workload | device | " + " | ".join(CONTENDERS) + " |", "|" + "---|" * (3 + len(CONTENDERS))]
    for (benchmark, workload, device), rows in groups.items():
        if "torch eager" not in rows or len(rows) < 2:
            continue
        base = rows["torch eager"]["throughput"]["value"]
        cells = []
        for contender in CONTENDERS:
            row = rows.get(contender)
            fraction = row and row.get("fraction_of_peak")
            cells.append(
                ""
                if row is None
                else f"{row['throughput']['value'] / base:.2f}x" + (f" ({fraction:.0%})" if fraction else "")
            )
        lines.append(f"| {benchmark} | {workload} | {device} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _precision_summary(results: list[dict]) -> str:
    """``--precision bf16``: each bf16-mixed row's throughput over its float32 twin's (the same
    benchmark, workload, contender and device), or "" when the run has none."""
    float32 = {_name(row): row for row in results if row.get("precision") == "float32"}
    lines = []
    for row in results:
        if row.get("precision") != MIXED:
            continue
        twin = float32.get(_name({**row, "workload": row["workload"].removesuffix(f", {MIXED}")}))
        if twin is not None:
            ratio = row["throughput"]["value"] / twin["throughput"]["value"]
            lines.append(
                f"| {twin['benchmark']} | {twin['workload']} | {row['contender']} | {row['device']} | {ratio:.2f}x |"
            )
    if not lines:
        return ""
    header = [
        "",
        "",
        "bf16-mixed throughput over float32:",
        "",
        "| benchmark | workload | contender | device | bf16 / float32 |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(header + lines)


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def _seconds(value: float) -> str:
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


# How each memory figure was measured, as the table shows it: different measures, never compared.
MEMORY_MEASURES = {
    "allocator peak": "allocator peak",  # torch's CUDA allocator or XLA's on a GPU, during the measurement
    "static estimate": "XLA estimate",  # XLA's analysis of one compiled program, before it runs
    "process RSS": "RSS",  # a process's resident memory (CPU)
}


def _memory(memory: dict) -> str:
    """A memory cell: the figure and what it is (``peak_memory["measure"]``)."""
    figure = _bytes(memory.get("bytes"))
    measure = MEMORY_MEASURES.get(memory.get("measure"))
    return f"{figure} ({measure})" if figure and measure else figure


def _bytes(value: int | None) -> str:
    if value is None:
        return ""
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value} B"


def _markdown(report: dict, table: str, summary: str) -> str:
    env, ctx = report["environment"], report["context"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    precision = env["precision"]
    settings = ", ".join(f"`{k}` = {v}" for k, v in precision.items() if k not in ("policy", "summary"))
    devices = []
    for device in ctx["devices"]:
        names = {"torch": env["torch"]["gpu"], "jax": env["jax"]["devices"].get("gpu")} if device == "gpu" else {}
        label = env["processor"] if device == "cpu" else ", ".join(f"{k}: {v}" for k, v in names.items() if v)
        devices.append(f"{device} ({label})")
    peaks = "; ".join(
        f"{device} {p['peak']:,.0f} GFLOP/s (" + ", ".join(f"{k} {v:,.0f}" for k, v in p.items() if k != "peak") + ")"
        for device, p in report["matmul_peak_gflops"].items()
    )
    threads = env["threads"]
    lines = [
        f"# ml-patterns bench ({report['created_at']})",
        "",
        f"- machine: {env['platform']}, {env['processor']}, {threads['cpus_available']} CPUs available",
        f"- threads: {ctx['threads']} for both frameworks ({threads['how']}; torch intra-op threads "
        f"{env['torch']['intra_op_threads']}, XLA:CPU pool sized from the CPUs)",
        f"- devices: {', '.join(devices)}",
        f"- versions: {versions}",
        f"- precision policy `{precision['policy']}`: {precision['summary']}; {settings}",
        f"- matmul peak measured in this run (best framework's median): {peaks}",
        f"- contenders: {', '.join(ctx['contenders'])}",
        "- timing: warm-up steps first, synchronized (`block_until_ready` / `torch.cuda.synchronize`), median of "
        "repeats with the interquartile range as a fraction of it; compile time apart, from cold caches",
    ]
    load = env["load_average_1_5_15min"]
    if load and load[0] > 0.5 * threads["cpus_available"]:
        lines.append(
            f"- **busy machine**: 1-minute load average {load[0]:.1f} on {threads['cpus_available']} CPUs "
            "before the run: other processes shared the cores, so expect noise (torch's OpenMP threads wait at "
            "barriers for descheduled peers and can run many times slower; `--threads 1` avoids that)"
        )
    if report["quick"]:
        lines.append(
            "- **quick run**: the smallest size of each workload, 5 repeats, and no torch.compile (its cold "
            "compile alone takes ~50 s on two cores); for smoke tests, not for conclusions"
        )
    lines += ["", table, "", "Throughput relative to torch eager (fraction of the matmul peak):", "", summary, ""]
    if report["skipped"]:
        lines += ["Skipped:", ""] + [f"- {_name(row)}: {row['skipped']}" for row in report["skipped"]] + [""]
    lines += ["![throughput per workload and contender](bench.png)", ""]
    return "\n".join(lines)
