"""The float32 noise verdict as the porting toolkit exposes it: the tests are the core's
(``ml_patterns.verdict``: numpy only, loads without torch or JAX), the figure the app's
(``ml_patterns_app.figures``)."""

from ml_patterns.verdict import FLOOR_MULTIPLE, Verdict, judge, one_ulp
from ml_patterns_app.figures import drift_figure

__all__ = ["FLOOR_MULTIPLE", "Verdict", "drift_figure", "judge", "one_ulp"]
