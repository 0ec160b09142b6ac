"""``USER_ERRORS``: the exceptions that mean "the input is wrong", not "the program is"
(``ml_patterns.errors`` says why each one is). ``ml-patterns`` and the processes it starts print
these as one line; every other exception keeps its traceback."""

from ml_patterns.checkpoint import CheckpointError, WeightMismatchError
from ml_patterns.data import DatasetError
from ml_patterns.errors import UsageError
from ml_patterns.molecules.tokenizer import TokenizationError

USER_ERRORS = (
    UsageError,
    DatasetError,
    CheckpointError,
    WeightMismatchError,
    TokenizationError,
    FileNotFoundError,
    FileExistsError,
)
