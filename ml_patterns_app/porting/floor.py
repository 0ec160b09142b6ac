"""The float32 noise floor of a training run, as the porting toolkit exposes it: the numbers are the
core's (``ml_patterns.parity_floor``: numpy only, loads without torch or JAX), the figure the app's
(``ml_patterns_app.figures``)."""

from ml_patterns.parity_floor import FLOOR_MULTIPLE, drift_and_floor, first_outside, one_ulp
from ml_patterns_app.figures import drift_figure

__all__ = ["FLOOR_MULTIPLE", "drift_and_floor", "drift_figure", "first_outside", "one_ulp"]
