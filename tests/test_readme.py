"""The README and docs/ agree with the program: the quick start is the command CI runs, links resolve
inside the repository, `ml-patterns COMMAND --help` documents every flag, and the output the
documents quote is what the program prints."""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import re
import types
from pathlib import Path

import pytest

from ml_patterns_app import cli
from ml_patterns_app.compare import launch, report

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = (ROOT / "README.md").read_text()
COMMANDS = (ROOT / "docs" / "COMMANDS.md").read_text()
README_MAX_LINES = 250
QUICK_START = (
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/ml-patterns compare",
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest",
)


def test_the_readme_stays_a_short_manual():
    lines = len(README.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; details belong in docs/"


def test_the_quick_start_commands_are_in_the_readme_verbatim():
    # .ci/run greps the test command as a whole line and runs it.
    for command in QUICK_START:
        assert command in README.splitlines(), command
    assert QUICK_START[1] in (ROOT / ".ci" / "run").read_text()


def test_documents_are_found():
    assert {path.name for path in DOCUMENTS} >= {"README.md", "ARCHITECTURE.md", "COMMANDS.md", "API.md"}


def dead_links(document: Path, root: Path = ROOT) -> list[str]:
    """The relative links of a Markdown file (an anchor dropped) that lead nowhere or out of ``root``."""
    dead = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", document.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        resolved = (document.parent / target).resolve()
        if not (resolved.is_relative_to(root) and resolved.exists()):
            dead.append(target)
    return dead


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_links_resolve_inside_the_repository(document):
    assert "../shared" not in document.read_text()
    assert dead_links(document) == [], f"{document.name}: dead links"


def test_a_dead_link_is_seen(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "HERE.md").write_text("x")
    document = tmp_path / "README.md"
    document.write_text(
        "[a](docs/HERE.md#part) [b](docs/MISSING.md#part) [c](https://example.org/x) [d](../outside.md)"
    )
    (tmp_path.parent / "outside.md").touch()
    assert dead_links(document, root=tmp_path) == ["docs/MISSING.md", "../outside.md"]


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    (subparsers,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def help_text(argv: list[str]) -> str:
    """What `ml-patterns ARGV` prints (argparse exits 0 after --help)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    return out.getvalue()


def test_every_subcommand_is_registered_and_listed_by_help():
    assert set(subcommand_parsers()) == set(cli.SUBCOMMANDS)
    text = help_text(["--help"])
    for command in cli.SUBCOMMANDS:
        assert command in text, command


@pytest.mark.parametrize("command", sorted(cli.SUBCOMMANDS))
def test_help_documents_every_flag(command):
    """Each argument of each subcommand has its own help text, and `--help` shows the flag with the
    start of that text (argparse re-wraps lines, hence the whitespace folded)."""
    text = " ".join(help_text([command, "--help"]).split())
    actions = [a for a in subcommand_parsers()[command]._actions if not isinstance(a, argparse._HelpAction)]
    assert actions, command
    for action in actions:
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"ml-patterns {command}: {name} has no help"
        for flag in action.option_strings:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{command} --help lacks {flag}"
        if not action.option_strings:
            assert (action.metavar or action.dest) in text, f"{command} --help lacks {name}"
        opening = " ".join(action.help.split("%(")[0].split())[:40]
        assert opening in text, f"ml-patterns {command} --help lacks the help of {name}: {opening!r}"


def quoted_verdicts() -> list[str]:
    return [line.removeprefix("Verdict: ") for line in README.splitlines() if line.startswith("Verdict: ")]


def verdict_patterns() -> list[str]:
    """The program's sentence, every number and the device name made a wildcard: quiet or busy,
    agreement decided by either test, and with or without the sentence it adds when JAX's compiling
    outweighed its steady-state training (warm-up 100 s against 3 epochs of 10 s here)."""
    patterns = []
    speed = results = None
    for busy, decided in itertools.product((False, True), ("ensemble floor", "float64 anchor")):
        reliability = {
            backend: {"busy": busy, "others_cpu_share": 0.5, "load_average_before": 1.0} for backend in ("torch", "jax")
        }
        for warmup_s in (1.0, 100.0):
            speed = {
                "torch": {"steps_per_s": 2.0},
                "jax": {"steps_per_s": 1.0, "steady_epoch_s": 10.0, "warmup_s": warmup_s, "train_steps": 300},
            }
            speed["jax"]["epochs"] = 3
            results = {"torch": types.SimpleNamespace(device={"name": "DEVICE"})}
            agreement = report._agreement(True, {"decided": decided, "horizon": None})
            template = report._verdict(speed, agreement, results, reliability)
            pattern = re.escape(template).replace("DEVICE", r".+").replace(r"2\.00x", r"[\d.]+x")
            pattern = pattern.replace(r"\(2\.0\ vs\ 1\.0\ steps/s\)", r"\([\d.]+\ vs\ [\d.]+\ steps/s\)")
            pattern = pattern.replace(r"100\.0\ s\ compiling", r"[\d.]+\ s\ compiling")
            pattern = pattern.replace(r"30\.0\ s\ of\ steady", r"[\d.]+\ s\ of\ steady")
            pattern = re.sub(r"50(?:\\\.0)?%", r"[\\d.]+%", pattern).replace(r"1\.0\ before", r"[\d.]+\ before")
            either = "(?:PyTorch\\ \\(eager\\)|JAX\\ \\(jax\\.jit\\))"
            pattern = pattern.replace("PyTorch\\ \\(eager\\)", either)
            pattern = pattern.replace("JAX\\ \\(jax\\.jit\\)\\ at", either + "\\ at")
            patterns.append(pattern)
    assert "outweighed" in report._verdict(speed, agreement, results, reliability)  # the longer form was built
    return patterns


def test_the_quoted_verdicts_are_ones_the_program_prints():
    quoted = quoted_verdicts()
    assert quoted, "README.md quotes no verdict"
    patterns = verdict_patterns()
    for verdict in quoted:
        assert any(re.fullmatch(pattern, verdict) for pattern in patterns), (patterns, verdict)


def test_the_quoted_progress_line_is_the_one_the_program_prints():
    (quoted,) = [line for line in README.splitlines() if re.match(r"PyTorch \(eager\)\s+epoch \d+/\d+  batch", line)]
    numbers = re.match(r".*epoch (\d+)/(\d+)  batch (\d+)/(\d+)  loss ([\d.]+)  ([\d.]+) steps/s", quoted).groups()
    terminal = io.StringIO()
    terminal.isatty = lambda: True
    event = {
        "event": "batch",
        "epoch": int(numbers[0]) - 1,
        "epochs": int(numbers[1]),
        "batch": int(numbers[2]),
        "batches": int(numbers[3]),
        "loss": float(numbers[4]),
        "steps_per_s": float(numbers[5]),
    }
    launch.StatusLine("PyTorch (eager)", terminal).event(json.dumps(event))
    assert terminal.getvalue() == "\r" + quoted


def test_the_quoted_parity_verdicts_are_the_ones_the_program_prints():
    source = (ROOT / "ml_patterns_app" / "porting" / "parity_report.py").read_text()
    for quoted in ("parity: all rows passed", "parity: FAILED"):
        assert quoted in source
        for document in (README, COMMANDS):
            assert f"`{quoted}`" in document, quoted
