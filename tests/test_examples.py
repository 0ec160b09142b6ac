"""Every script in examples/ runs as a user would run it and prints what it promises.

Each example declares its meaningful output line in a comment, ``# expect: REGEX`` (matched against
each line of its stdout); a new example is picked up by the glob and must declare one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
EXPECT = re.compile(r"^# expect: (.+)$", re.MULTILINE)
# Arguments a user could pass, to run an example smaller where what it shows does not need its
# default size: check_your_port compares training over 50 steps instead of 200 (its verdict
# against the noise floor is tested at full strength in parity_tests/test_porting_catalogue.py),
# compare_your_model one epoch instead of 3 (compare on a pair: tests/test_compare_models.py).
ARGUMENTS = {"check_your_port.py": ["--steps", "50"], "compare_your_model.py": ["--epochs", "1"]}


def test_there_are_examples():
    assert {"seed_train_torch.py", "seed_train_jax.py", "callbacks.py"} <= {path.name for path in EXAMPLES}


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.name)
def test_example_runs(script, tmp_path):
    declared = EXPECT.findall(script.read_text())
    assert len(declared) == 1, f"{script.name} must declare its meaningful output line once: '# expect: REGEX'"
    # PYTHONPATH: the repository root, as an editable install would give; cwd: anywhere but the repo.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script), *ARGUMENTS.get(script.name, [])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{script.name} exited {result.returncode}:\n{result.stderr[-3000:]}"
    lines = result.stdout.splitlines()
    assert any(re.search(declared[0], line) for line in lines), (
        f"no line of {script.name} matches {declared[0]!r}:\n{result.stdout[-2000:]}"
    )
