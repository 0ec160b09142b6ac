"""One comparison per layer output or parameter gradient, with an explicit, bounded float64 fallback.

A row passes when the NNX value is within the policy's tolerance of the torch value
(``ml_patterns.parity``: FORWARD for layer outputs, GRADIENT for gradients, LOSS for the loss).

Float64 fallback. Sums of many terms that cancel (an embedding table's gradient adds every
occurrence of a token) can end near zero, far below their terms; float32 rounding of the terms then
exceeds an elementwise tolerance on both backends alike. Such a row still passes when a third
evaluation in float64 (torch on a float64 copy of the module: neither side under test) shows that
both sides are equally close to the truth, and only then:

1. ``max|nnx - float64| <= ROUNDING_FACTOR * max|torch - float64| + atol`` (``ROUNDING_FACTOR`` from
   ``ml_patterns.parity``: two implementations that round differently are each about as far from
   the truth, not identically far), and
2. the bound: ``max|nnx - torch| <= FALLBACK_BOUND * max|float64|``. Rounding of cancelling sums is
   small against the leaf's largest entries; a real bug is not, so beyond the bound a row fails
   whatever the reference says.

A row decided by the fallback says so in its note ("passed by float64-reference fallback: ...").
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ml_patterns.parity import ROUNDING_FACTOR, Tolerance

# Largest difference the fallback accepts, relative to the largest |entry| of the float64 reference.
# float32 rounding of a sum of n terms is at most about n * 6e-8 of its terms; 1e-4 covers sums of
# ~1,000 terms (an embedding row's gradient over a batch) and refuses errors of a bug's size.
FALLBACK_BOUND = 1e-4


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
    ``reference`` is the float64 value, or None for no fallback. ``max_rel_diff`` is over entries
    where ``expected != 0``; NaN anywhere, or different shapes, fail."""
    a, b = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    if a.shape != b.shape:
        return np.nan, np.nan, False, f"shape {list(a.shape)} vs {list(b.shape)}"
    if a.size == 0:
        return 0.0, 0.0, True, ""
    diff = np.abs(b - a)
    nonzero = a != 0
    max_abs = float(diff.max())
    max_rel = float((diff[nonzero] / np.abs(a[nonzero])).max()) if nonzero.any() else 0.0
    if np.isnan(a).any() or np.isnan(b).any():
        return max_abs, max_rel, False, "NaN"
    if bool(np.all(diff <= tolerance.atol + tolerance.rtol * np.abs(a))):
        return max_abs, max_rel, True, ""
    if reference is None:
        return max_abs, max_rel, False, ""
    truth = np.asarray(reference, np.float64)
    torch_error, nnx_error = float(np.abs(a - truth).max()), float(np.abs(b - truth).max())
    scale = float(np.abs(truth).max())
    close = nnx_error <= ROUNDING_FACTOR * torch_error + tolerance.atol
    bounded = max_abs <= FALLBACK_BOUND * scale
    detail = (
        f"|nnx-f64| {nnx_error:.2e} {'<=' if close else '>'} {ROUNDING_FACTOR:g} x |torch-f64| {torch_error:.2e}"
        f" + atol; |nnx-torch| {max_abs:.2e} {'<=' if bounded else '>'} {FALLBACK_BOUND:g} x max|f64| {scale:.2e}"
    )
    if close and bounded:
        return max_abs, max_rel, True, f"passed by float64-reference fallback: {detail}"
    return max_abs, max_rel, False, f"float64-reference fallback refused: {detail}"


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
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    failed = sum(not row.passed for row in rows)
    return "\n".join([*text, f"{len(rows) - failed} of {len(rows)} passed"])


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """Rows in order (forward: execution order; gradients: definition order), the row that names the
    divergence (``first``; None when every row passes) and a sentence saying where to look."""

    kind: str  # "forward" or "gradients"
    rows: tuple[Row, ...]
    first: Row | None
    where: str

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    def format_table(self) -> str:
        verdict = "agree" if self.passed else f"DIVERGE at {self.first.label} ({self.first.what})"
        return f"{self.kind}: {verdict}\n{format_rows(list(self.rows), self.first)}\n{self.where}"

    __str__ = format_table

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise AssertionError(f"{self.kind} differ: {self.where}\n{format_rows(list(self.rows), self.first)}")
