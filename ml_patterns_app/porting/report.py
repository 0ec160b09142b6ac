"""One comparison per layer output, parameter gradient or optimizer step, and the reports they make.

A row passes when the NNX value is within the policy's tolerance of the torch value
(``ml_patterns.parity``: FORWARD for layer outputs, GRADIENT for gradients, LOSS for the loss),
or by the policy's explicit, bounded float64-reference fallback (``parity.compare_arrays``; the
reference here is torch on a float64 copy of the module: neither side under test). A row the
fallback decides says so in its note.
"""

from __future__ import annotations

import dataclasses

from ml_patterns import parity
from ml_patterns.parity import Tolerance


@dataclasses.dataclass(frozen=True)
class Row:
    """One compared quantity: ``label`` names it on both sides (``torch name -> nnx name``)."""

    label: str
    torch_name: str
    nnx_name: str
    what: str  # "input", "output", "gradient", "loss"
    torch_shape: tuple[int, ...]
    nnx_shape: tuple[int, ...]
    max_abs_diff: float
    max_rel_diff: float
    tolerance: Tolerance
    passed: bool
    note: str = ""


def compare_values(expected, actual, tolerance: Tolerance, reference=None) -> tuple[float, float, bool, str]:
    """``(max_abs_diff, max_rel_diff, passed, note)`` of ``actual`` (NNX) against ``expected`` (torch);
    ``reference`` is the float64 value, or None for no fallback (``parity.compare_arrays``)."""
    row = parity.compare_arrays("", expected, actual, tolerance, reference=reference, names=("torch", "nnx"))
    return row.max_abs_diff, row.max_rel_diff, row.passed, row.note


def format_rows(rows: list[Row], first: Row | None = None) -> str:
    header = ("", "torch -> nnx", "what", "shape", "max abs diff", "max rel diff", "rtol", "atol", "result")
    lines = [header]
    for row in rows:
        shape = str(list(row.torch_shape)) + ("" if row.torch_shape == row.nnx_shape else f" vs {list(row.nnx_shape)}")
        result = ("ok" if row.passed else "FAIL") + (f" ({row.note})" if row.note else "")
        lines.append(
            (
                ">>" if row is first else "",
                row.label,
                row.what,
                shape,
                f"{row.max_abs_diff:.2e}",
                f"{row.max_rel_diff:.2e}",
                f"{row.tolerance.rtol:g}",
                f"{row.tolerance.atol:g}",
                result,
            )
        )
    failed = sum(not row.passed for row in rows)
    return parity.text_table(lines) + f"\n{len(rows) - failed} of {len(rows)} passed"


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """Rows in order (forward: execution order; gradients: definition order), the row that names the
    divergence (``first``; None when every row passes) and a sentence saying where to look.

    ``scope`` says how much was compared; ``problems`` are reasons the comparison proves nothing (no
    row at all, parameters left out): with any, or without rows, the report fails, whatever the rows."""

    kind: str  # "forward", "gradients" or "optimizer"
    rows: tuple[Row, ...]
    first: Row | None
    where: str
    scope: str = ""
    problems: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return bool(self.rows) and not self.problems and all(row.passed for row in self.rows)

    def format_table(self) -> str:
        if self.first is not None:
            verdict = f"DIVERGE at {self.first.label} ({self.first.what})"
        elif not self.passed:
            verdict = "FAIL: " + ("; ".join(self.problems) or "nothing was compared")
        else:
            verdict = "agree"
        text = [f"{self.kind}: {verdict}", format_rows(list(self.rows), self.first)]
        text += [self.scope] if self.scope else []
        text += [f"  - {problem}" for problem in self.problems] if self.first is not None else []
        return "\n".join([*text, self.where])

    __str__ = format_table

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise AssertionError(f"{self.kind} differ: {self.where}\n{format_rows(list(self.rows), self.first)}")
