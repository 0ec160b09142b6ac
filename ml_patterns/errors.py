"""The errors that mean "the input is wrong", not "the program is".

``ml-patterns`` prints these as one line and exits with status 2; every other exception is a bug
(or an environment failure) and keeps its traceback. The set, and why each is a user error:

- ``UsageError``: a request the program cannot honour as given: a flag value out of range, an
  unknown benchmark or model field, a device that is not there.
- ``ml_patterns.data.DatasetError``: a prepared dataset that is missing, incomplete or corrupt.
- ``ml_patterns.checkpoint.CheckpointError`` / ``WeightMismatchError``: a checkpoint file that is
  not one, or weights that do not fit the model.
- ``ml_patterns.molecules.tokenizer.TokenizationError``: a SMILES string no token covers.
- ``FileNotFoundError`` / ``FileExistsError``: a path given on the command line that is missing,
  or an output that exists (pass ``--overwrite``).

All the library's own ones are ``ValueError`` subclasses, so code catching ``ValueError`` keeps working.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A request the program cannot honour as given; the message names the flag or field and what to do."""
