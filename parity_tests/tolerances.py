"""The tolerance policy, for the parity suite: the one table lives in ``ml_patterns.parity``."""

from ml_patterns.parity import EXACT, FORWARD, GPU, GRADIENT, HISTORY, LOSS, Tolerance

__all__ = ["EXACT", "FORWARD", "GPU", "GRADIENT", "HISTORY", "LOSS", "Tolerance"]
