"""The bad-input catalogue, round 2 (issue 22), compare's report folder and bench's results folder:
``--out`` onto what is not ours is refused before any training or measuring, and a full disk keeps
the previous report. Rows as in tests/catalogue_round2.py. Training and measuring are replaced by
a stand-in that fails: a row passes only if the refusal comes first."""

from __future__ import annotations

import json

from ml_patterns.errors import DestinationError
from tests.catalogue import Case, Scene
from tests.catalogue_round2 import disk_full

REPORT_FILES = ("report.md", "results.json", "loss_curves.png", "drift.png", "speed.png")


def no_work(scene: Scene) -> None:
    """Training (compare's workers) and measuring (bench) fail at once if they start."""
    import ml_patterns_app.compare.runner
    import ml_patterns_bench.runner

    def started(*args, **kwargs):
        raise RuntimeError("the work started: the output should have been refused first")

    scene.monkeypatch.setattr(ml_patterns_app.compare.runner, "run_worker", started)
    scene.monkeypatch.setattr(ml_patterns_bench.runner, "restrict_cpus", started)


def compare_into(out: str, data: str | None = None):
    def provoke(scene: Scene) -> tuple[int, str]:
        no_work(scene)
        # --device cpu: no device probe (a process per framework) before the destination is checked
        argv = ["compare", "--data", data or str(scene.default_dataset), "--out", out, "--no-compile-cache"]
        return scene.cli(*argv, "--device", "cpu")

    return provoke


def bench_into(out: str):
    def provoke(scene: Scene) -> tuple[int, str]:
        no_work(scene)
        return scene.cli("bench", "--quick", "--only", "data", "--data", str(scene.default_dataset), "--out", out)

    return provoke


def a_report(scene: Scene, wall_time_s: float = 1.0) -> dict:
    """A compare report built from made-up results (tests/test_compare.py's), written nowhere yet."""
    from ml_patterns.molecules.prepare import read_manifest
    from tests.test_compare import fake_report

    report = fake_report((scene.default_dataset, read_manifest(scene.default_dataset)))
    return {**report, "wall_time_s": wall_time_s}


def write_a_report(scene: Scene, out: str = "out", wall_time_s: float = 1.0) -> None:
    from ml_patterns_app.compare.written import write_report

    write_report(a_report(scene, wall_time_s), scene.root / out)


def old_report(scene: Scene) -> None:
    """A report folder as versions before the marker wrote it: the report files, nothing else."""
    for name in REPORT_FILES:
        scene.file(f"out/{name}", "an earlier report")


REPORT_CASES = [
    Case(
        "compare-out-onto-a-folder-of-user-files",
        "fixed-harmful",
        compare_into("mywork"),
        2,
        r"refusing to replace .*mywork: it is not a compare report written by ml-patterns .* \(notes\.txt\)",
        setup=lambda s: s.file("mywork/notes.txt", "a week of notes"),
    ),
    Case(
        "compare-out-is-the-dataset-it-reads",
        "fixed-harmful",
        compare_into("ds", "ds"),
        2,
        r"refusing to write to ds: it holds ds, which must be kept",
        setup=lambda s: s.dataset(),
    ),
    Case(
        "compare-out-holds-the-dataset-it-reads",
        "fixed-harmful",
        compare_into("work", "work/ds"),
        2,
        r"refusing to write to work: it holds work/ds, which must be kept",
        setup=lambda s: s.dataset("work/ds"),
    ),
    Case(
        "compare-out-is-the-working-directory",
        "fixed-harmful",
        compare_into("."),
        2,
        r"refusing to write to \.: it is the working directory or holds it",
        setup=lambda s: s.file("notes.txt", "mine"),
    ),
    Case(
        "compare-out-an-empty-folder-is-fine",
        "refused",
        compare_into("empty"),
        RuntimeError,  # the stand-in's: the work started, as it must for an empty folder
        r"the work started",
        setup=lambda s: (s.root / "empty").mkdir(),
    ),
    Case(
        "compare-report-replaces-an-earlier-unmarked-report",
        "refused",
        write_a_report,
        None,
        setup=old_report,
        changes=True,
        kept=lambda s, _: (
            json.loads((s.root / "out" / "results.json").read_text())["wall_time_s"] == 1.0
            and {p.name for p in (s.root / "out").iterdir()} >= set(REPORT_FILES)
        ),
    ),
    Case(
        "compare-report-disk-full-keeps-the-previous-report",
        "fixed-weak",
        lambda s: (disk_full(s), write_a_report(s, wall_time_s=2.0)),
        DestinationError,
        r"^disk full at .*out: nothing was replaced, the previous copy is kept",
        setup=write_a_report,
    ),
    Case(
        "bench-out-onto-a-folder-of-user-files",
        "fixed-harmful",
        bench_into("mywork"),
        2,
        r"refusing to replace .*mywork: it is not a folder of benchmark results written by ml-patterns",
        setup=lambda s: s.file("mywork/notes.txt", "my own numbers"),
    ),
    Case(
        "bench-out-is-the-dataset-it-reads",
        "fixed-harmful",
        lambda s: (no_work(s), s.cli("bench", "--quick", "--only", "data", "--data", "ds", "--out", "ds"))[1],
        2,
        r"refusing to write to ds: it holds ds, which must be kept",
        setup=lambda s: s.dataset(),
    ),
]
