"""Compare two nested dicts of arrays, path by path, and report where they disagree.

In the spirit of Hugging Face's old ``check_pt_flax_outputs``: every leaf is named by its path, so a
failure says *which* output or gradient diverged and by how much, not only that something did.

    report = compare({"outputs": torch_out, "gradients": torch_grads},
                     {"outputs": jax_out, "gradients": jax_grads},
                     {"outputs": FORWARD, "gradients": GRADIENT})
    print(report.format_table())
    report.raise_if_failed()

Sums of many terms (an embedding table's gradient adds up every occurrence of a token in the
batch) can cancel to an element far smaller than its terms; float32 rounding of the terms then
exceeds an elementwise relative tolerance on both backends alike. Pass ``reference`` (the same
computation in float64, by a third evaluation: neither side under test) and a leaf outside its
tolerance still passes when, and only when,

1. the two sides are equally close to the truth: ``max|actual - reference| <= ROUNDING_FACTOR *
   max|expected - reference| + atol``, and
2. their difference is small against the leaf: ``max|actual - expected| <= FALLBACK_BOUND *
   max|reference|``. Rounding of cancelling sums is small against the leaf's largest entries; a
   bug's error is not, and beyond the bound the row fails whatever the reference says.

Every row the fallback decides says so in its note ("passed by float64-reference fallback: ..." or
"float64-reference fallback refused: ...").

Leaves are anything ``numpy.asarray`` accepts (numpy arrays, Python numbers, JAX arrays, CPU torch
tensors without grad); bfloat16 and other low-precision leaves are compared in float64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Pass when ``|actual - expected| <= atol + rtol * |expected|`` elementwise (``numpy.allclose``)."""

    rtol: float
    atol: float


# How much larger than the expected side's own float32 error (against a float64 reference) the
# actual side's may be: two implementations rounding differently are each about as far from the
# truth, not identically far.
ROUNDING_FACTOR = 2.0

# The float64 fallback's bound: the largest max|actual - expected| it accepts, relative to the
# leaf's largest float64 entry. float32 rounding of a sum of n terms is at most about n * 6e-8 of
# its terms: 1e-4 covers sums of ~1,000 terms. Measured: ``ml-patterns parity`` on the default data
# has one row the fallback decides (the token embedding's gradient), at 4e-7 of its leaf.
FALLBACK_BOUND = 1e-4

# The tolerance policy (docs/PARITY.md), float32, in one place: compare, the parity report and the
# parity suite import it. Never loosen one to pass a test: find the cause, and where it is a real,
# explained difference, write the explanation by the test.
#
# CPU, float32:
LOSS = Tolerance(rtol=1e-6, atol=1e-6)  # losses, masked CE, combined loss (one call)
FORWARD = Tolerance(rtol=0.0, atol=1e-5)  # model forward outputs, given copied weights
GRADIENT = Tolerance(rtol=1e-5, atol=1e-6)  # gradients of every parameter
HISTORY = Tolerance(rtol=1e-4, atol=1e-6)  # training histories (same start, same batch order), per epoch value
EXACT = Tolerance(rtol=0.0, atol=0.0)  # collate outputs, tokenizer ids, sampler order

# A GPU with full float32 forced (TF32 off on both sides): reductions run in other orders there.
GPU = {
    "loss": Tolerance(rtol=1e-5, atol=1e-6),
    "forward": Tolerance(rtol=0.0, atol=1e-4),
    "gradient": Tolerance(rtol=1e-4, atol=1e-5),
    "history": Tolerance(rtol=1e-3, atol=1e-6),
}
CPU = {"loss": LOSS, "forward": FORWARD, "gradient": GRADIENT, "history": HISTORY}


def tolerance(what: str, device_kind: str = "cpu") -> Tolerance:
    """The policy's tolerance for ``what`` (``"loss"``, ``"forward"``, ``"gradient"``, ``"history"``)
    on a ``"cpu"`` or ``"gpu"``."""
    table = {"cpu": CPU, "gpu": GPU}.get(device_kind)
    if table is None or what not in table:
        raise KeyError(f"no tolerance for {what!r} on {device_kind!r}: known {sorted(CPU)} on 'cpu' or 'gpu'")
    return table[what]


# bfloat16 compute (training precision "bf16-mixed", docs/PRECISION.md). bfloat16 keeps 8
# significant bits: eps = 2**-8, one rounding moves a value by up to 2**-9 of it. The two backends
# round at different points (torch's CPU kernels round a fused op's result once where XLA may round
# its bfloat16 intermediates), so they agree only to some bfloat16 steps, as each agrees with
# float64. An elementwise relative tolerance means nothing there (a small result of large bfloat16
# terms carries the terms' rounding), so each row is a multiple of eps times a scale:
# ``bf16_tolerance(what, scale)``, ``scale`` the leaf's largest float64 magnitude (outputs, the
# loss, an epoch's loss) or, for gradients, the model's largest float64 gradient (a gradient that is
# exactly 0 in exact arithmetic, attention's key bias, is rounding noise of that size on both sides).
# The multiples, for the depth of our test models (up to ~10 bfloat16 roundings between the input
# and an output or a gradient, each of up to eps/2 on each side, so two sides up to ~10 eps apart
# in the worst case): 16 eps for outputs and gradients; a loss is a mean, whose rounding errors
# average out: 4 eps; a training history compounds a few steps of that: 8 eps.
BF16_EPS = 2.0**-8
BF16_SCALED = {"loss": 4 * BF16_EPS, "forward": 16 * BF16_EPS, "gradient": 16 * BF16_EPS, "history": 8 * BF16_EPS}


def bf16_tolerance(what: str, scale: float) -> Tolerance:
    """The bfloat16 row for ``what`` (``"loss"``, ``"forward"``, ``"gradient"``, ``"history"``) at
    ``scale`` (see ``BF16_SCALED``): ``|actual - expected| <= BF16_SCALED[what] * scale``."""
    if what not in BF16_SCALED:
        raise KeyError(f"no bfloat16 tolerance for {what!r}: known {sorted(BF16_SCALED)}")
    return Tolerance(rtol=0.0, atol=BF16_SCALED[what] * scale)


# float32 matmul precision policies, set alike on both sides by ``torch_impl.runtime`` and
# ``jax_impl.runtime`` (``set_precision``). Parity needs "float32": on A100/H100 GPUs JAX runs float32
# matmuls in TF32 by default and torch does not. CPUs compute full float32 under either policy.
PRECISIONS = {
    "float32": "full float32 matmuls on both sides (TF32 off)",
    "tf32": "TF32 matmuls on both sides (on GPUs that have it)",
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One leaf. ``max_rel_diff`` is over elements where ``expected != 0``; diffs are NaN when the
    shapes disagree or a side is missing, and a NaN in either array fails the row. A row outside
    its tolerance that passes by the float64 reference has ``expected_error``/``actual_error``."""

    path: str
    expected_shape: tuple[int, ...] | None
    actual_shape: tuple[int, ...] | None
    max_abs_diff: float
    max_rel_diff: float
    tolerance: Tolerance
    passed: bool
    note: str = ""
    # max |side - reference| when a float64 reference was given for this leaf, else None.
    expected_error: float | None = None
    actual_error: float | None = None


@dataclasses.dataclass(frozen=True)
class Report:
    rows: tuple[Row, ...]
    names: tuple[str, str] = ("expected", "actual")

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def failures(self) -> tuple[Row, ...]:
        return tuple(row for row in self.rows if not row.passed)

    def format_table(self, *, failures_only: bool = False) -> str:
        rows = self.failures if failures_only else self.rows
        header = ("path", "shape", "max abs diff", "max rel diff", "rtol", "atol", "result")
        lines = [header]
        for row in rows:
            shape = _shape_text(row.expected_shape)
            if row.actual_shape != row.expected_shape:
                shape = f"{shape} vs {_shape_text(row.actual_shape)}"
            result = ("ok" if row.passed else "FAIL") + (f" ({row.note})" if row.note else "")
            lines.append(
                (
                    row.path,
                    shape,
                    f"{row.max_abs_diff:.3e}",
                    f"{row.max_rel_diff:.3e}",
                    f"{row.tolerance.rtol:g}",
                    f"{row.tolerance.atol:g}",
                    result,
                )
            )
        failed = len(self.failures)
        summary = f"{len(self.rows) - failed} of {len(self.rows)} passed ({self.names[1]} against {self.names[0]})"
        return text_table(lines) + "\n" + summary

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise AssertionError(f"{len(self.failures)} leaf/leaves differ:\n" + self.format_table(failures_only=True))


def compare(
    expected: Mapping,
    actual: Mapping,
    tolerance: Tolerance | Mapping[str, Tolerance],
    *,
    reference: Mapping | None = None,
    names: tuple[str, str] = ("expected", "actual"),
) -> Report:
    """Compares every leaf of two nested dicts (paths joined with ``/``).

    Args:
        expected: the reference tree (e.g. torch's outputs).
        actual: the tree under test, with the same paths.
        tolerance: one ``Tolerance`` for every leaf, or one per top-level key.
        reference: optionally, the same quantities computed in higher precision (any subset of
            the paths); see the module docstring.
        names: how the report calls the two sides.

    A path present on one side only is a failed row, as is a shape mismatch.
    """
    left, right = flatten(expected), flatten(actual)
    truth = flatten(reference) if reference is not None else {}
    rows = []
    for path in list(left) + [p for p in right if p not in left]:
        tol = _tolerance_for(path, tolerance)
        if path not in right or path not in left:
            side = names[1] if path not in right else names[0]
            shapes = (_shape_or_none(left.get(path)), _shape_or_none(right.get(path)))
            rows.append(Row(path, *shapes, np.nan, np.nan, tol, False, f"missing in {side}"))
            continue
        rows.append(compare_arrays(path, left[path], right[path], tol, reference=truth.get(path), names=names))
    return Report(tuple(rows), names)


def compare_arrays(
    path: str,
    expected,
    actual,
    tolerance: Tolerance,
    *,
    reference=None,
    names: tuple[str, str] = ("expected", "actual"),
) -> Row:
    a, b = _as_float(expected, path), _as_float(actual, path)
    if a.shape != b.shape:
        return Row(path, a.shape, b.shape, np.nan, np.nan, tolerance, False, "shape mismatch")
    if a.size == 0:
        return Row(path, a.shape, b.shape, 0.0, 0.0, tolerance, True)
    diff = np.abs(b - a)
    nonzero = a != 0
    max_abs = float(np.max(diff))
    max_rel = float(np.max(diff[nonzero] / np.abs(a[nonzero]))) if nonzero.any() else 0.0
    if np.any(np.isnan(a) | np.isnan(b)):
        return Row(path, a.shape, b.shape, max_abs, max_rel, tolerance, False, "NaN")
    within = bool(np.all(diff <= tolerance.atol + tolerance.rtol * np.abs(a)))
    if within or reference is None:
        return Row(path, a.shape, b.shape, max_abs, max_rel, tolerance, within)
    truth = _as_float(reference, path)
    if truth.shape != a.shape:
        raise ValueError(f"{path}: reference shape {truth.shape} differs from the compared shape {a.shape}")
    expected_error, actual_error = float(np.max(np.abs(a - truth))), float(np.max(np.abs(b - truth)))
    scale = float(np.max(np.abs(truth)))
    close = actual_error <= ROUNDING_FACTOR * expected_error + tolerance.atol
    bounded = max_abs <= FALLBACK_BOUND * scale
    detail = (
        f"max|{names[1]} - f64| {actual_error:.2e} {'<=' if close else '>'} {ROUNDING_FACTOR:g} x "
        f"max|{names[0]} - f64| {expected_error:.2e} + atol; max|{names[1]} - {names[0]}| {max_abs:.2e} "
        f"{'<=' if bounded else '>'} {FALLBACK_BOUND:g} x max|f64| {scale:.2e}"
    )
    passed = close and bounded
    note = (
        f"passed by float64-reference fallback: {detail}" if passed else f"float64-reference fallback refused: {detail}"
    )
    return Row(path, a.shape, b.shape, max_abs, max_rel, tolerance, passed, note, expected_error, actual_error)


def text_table(lines: list[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell, a rule under the first line (the header)."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)


def flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}``; leaves are everything that is not a Mapping."""
    if not isinstance(tree, Mapping):
        raise TypeError(f"expected a dict of arrays at {prefix or 'the root'}, got {type(tree).__name__}")
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, path))
        else:
            flat[path] = value
    return flat


def _tolerance_for(path: str, tolerance: Tolerance | Mapping[str, Tolerance]) -> Tolerance:
    if isinstance(tolerance, Tolerance):
        return tolerance
    top = path.split("/", 1)[0]
    if top not in tolerance:
        raise KeyError(f"no tolerance for {path!r}: tolerances are given for {sorted(tolerance)}")
    return tolerance[top]


def _as_float(value, path: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind in "OUSM":
        raise TypeError(f"{path}: cannot compare a leaf of dtype {array.dtype}")
    try:
        return array.astype(np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{path}: cannot compare a leaf of dtype {array.dtype}") from None


def _shape_or_none(value) -> tuple[int, ...] | None:
    return None if value is None else tuple(np.shape(value))


def _shape_text(shape) -> str:
    return "missing" if shape is None else "[" + ", ".join(map(str, shape)) + "]"
