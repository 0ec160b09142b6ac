"""``ml-patterns bench``: runs the registered benchmarks, prints a table, writes bench.json and bench.md."""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Callable
from pathlib import Path

from bench import data_loading
from bench.common import environment
from ml_patterns.io import atomic_write_text

# name -> run(data_dir, quick) -> list of result rows
BENCHMARKS: dict[str, Callable[[Path, bool], list[dict]]] = {
    "data": data_loading.run,
}


def run_benchmarks(args: argparse.Namespace) -> int:
    selected = args.only or list(BENCHMARKS)
    unknown = sorted(set(selected) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}")
    if not (args.data / "manifest.json").is_file():
        from ml_patterns.prepare import prepare_dataset

        prepare_dataset(args.data, progress=False)

    results = []
    for name in selected:
        print(f"running {name} ...", flush=True)
        results.extend(BENCHMARKS[name](args.data, args.quick))

    report = {
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "environment": environment(),
        "results": results,
    }
    table = format_table(results)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "bench.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(args.out / "bench.md", _markdown(report, table))
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    return 0


def format_table(results: list[dict]) -> str:
    header = "| benchmark | workload | contender | device | median | IQR | throughput |"
    lines = [header, "|" + "---|" * 7]
    for row in results:
        timing, throughput = row["timing"], row["throughput"]
        lines.append(
            f"| {row['benchmark']} | {row['workload']} | {row['contender']} | {row['device']} "
            f"| {_seconds(timing['median_s'])} | {_seconds(timing['iqr_s'])} "
            f"| {throughput['value']:,.0f} {throughput['unit']} |"
        )
    return "\n".join(lines)


def _seconds(value: float) -> str:
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def _markdown(report: dict, table: str) -> str:
    env = report["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    return (
        f"# ml-patterns bench ({report['created_at']})\n\n"
        f"- machine: {env['platform']}, {env['processor']}, {env['cpus_available']} CPUs available\n"
        f"- versions: {versions}\n"
        f"- quick: {report['quick']}\n\n{table}\n"
    )
