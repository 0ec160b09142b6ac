"""The README and docs/ agree with the program: links resolve inside the repository, every flag of
every subcommand is documented, and the output the README quotes is what the program prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ml_patterns_app import cli
from ml_patterns_app.compare import report, runner

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_links_resolve_inside_the_repository(document):
    text = document.read_text()
    assert "../shared" not in text
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        resolved = (document.parent / target).resolve()
        assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{document.name}: dead link {target}"


@pytest.mark.parametrize("command", sorted(cli.SUBCOMMANDS))
def test_every_subcommand_and_flag_is_in_the_readme(command):
    assert f"ml-patterns {command}" in README
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert f"`{flag}" in README or f"[{flag}" in README, f"{command} {flag} is not in the README"


def quoted_verdict() -> str:
    (line,) = [line for line in README.splitlines() if line.startswith("Verdict: ")]
    return line.removeprefix("Verdict: ")


def test_the_quoted_verdict_is_the_one_the_program_prints():
    # The program's sentence, with every number and the device name made a wildcard; with or without
    # the sentence it adds when JAX's compiling outweighed its steady-state training (warm-up 100 s
    # against 3 epochs of 10 s here).
    quiet = {backend: {"busy": False} for backend in ("torch", "jax")}
    patterns = []
    for warmup_s in (1.0, 100.0):
        speed = {
            "torch": {"steps_per_s": 2.0},
            "jax": {"steps_per_s": 1.0, "steady_epoch_s": 10.0, "warmup_s": warmup_s},
        }
        results = {"torch": {"device": {"name": "DEVICE"}}, "jax": {"step_times": [[0.1] * 100] * 3}}
        template = report._verdict(speed, True, results, quiet)
        pattern = re.escape(template).replace("DEVICE", r".+").replace(r"2\.00x", r"[\d.]+x")
        pattern = pattern.replace(r"\(2\.0\ vs\ 1\.0\ steps/s\)", r"\([\d.]+\ vs\ [\d.]+\ steps/s\)")
        pattern = pattern.replace(r"100\.0\ s\ compiling", r"[\d.]+\ s\ compiling")
        pattern = pattern.replace(r"30\.0\ s\ of\ steady", r"[\d.]+\ s\ of\ steady")
        either = "(?:PyTorch\\ \\(eager\\)|JAX\\ \\(jax\\.jit\\))"
        pattern = pattern.replace("PyTorch\\ \\(eager\\)", either)
        pattern = pattern.replace("JAX\\ \\(jax\\.jit\\)\\ at", either + "\\ at")
        patterns.append(pattern)
    assert "outweighed" in report._verdict(speed, True, results, quiet)  # the second form was built
    assert any(re.fullmatch(pattern, quoted_verdict()) for pattern in patterns), (patterns, quoted_verdict())


def test_the_quoted_progress_line_is_the_one_the_program_prints():
    import io
    import json

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
    runner.StatusLine("PyTorch (eager)", terminal).event(json.dumps(event))
    assert terminal.getvalue() == "\r" + quoted


def test_the_quoted_parity_verdicts_are_the_ones_the_program_prints():
    source = (ROOT / "ml_patterns_app" / "porting" / "parity_report.py").read_text()
    for quoted in ("parity: all rows passed", "parity: FAILED"):
        assert f"`{quoted}`" in README and quoted in source


def test_the_check_your_own_port_example_runs_as_written():
    """The README's porting example is complete: its code block runs as it stands and its own
    asserts (forward and training agree) hold."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Check your own port") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md (Check your own port)", "exec"), namespace)
    assert namespace["training"].passed and len(namespace["training"].torch_losses) == 100
