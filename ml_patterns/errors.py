"""The errors that mean "the input is wrong", not "the program is".

``ml-patterns`` prints these as one line and exits with status 2; every other exception is a bug
(or an environment failure) and keeps its traceback. The set, and why each is a user error:

- ``UsageError``: a request the program cannot honour as given: a flag value out of range, an
  unknown benchmark or model field, a device that is not there. Its subclasses here: ``OptionError``
  (a bad option value), ``DestinationError`` (an output that may not or cannot be written) and
  ``ml_patterns.molecules.sources.SourceError`` (a source table that cannot be used).
- ``ml_patterns.data.DatasetError``: a prepared dataset that is missing, incomplete or corrupt.
- ``ml_patterns.checkpoint.CheckpointError`` / ``WeightMismatchError``: a checkpoint file that is
  not one, or weights that do not fit the model.
- ``ml_patterns.molecules.tokenizer.TokenizationError``: a SMILES string no token covers.
- ``FileNotFoundError`` / ``FileExistsError``: a path given on the command line that is missing,
  or an output that exists (pass ``--overwrite``).

All the library's own ones are ``ValueError`` subclasses, so code catching ``ValueError`` keeps working.

An option often exists twice: as a Python parameter (``overwrite=True``, ``seed``) and as a
command-line flag (``--overwrite``, ``--seed``). An error about it carries both wordings: ``str(error)``
for Python callers and ``error.cli_message`` for the command line, which prints ``cli_message(error)``.
"""

from __future__ import annotations

from pathlib import Path


class UsageError(ValueError):
    """A request the program cannot honour as given; the message names the flag or field and what to do."""


def flag(parameter: str) -> str:
    """The command-line flag of a Python parameter: ``rdkit_properties`` -> ``--rdkit-properties``."""
    return "--" + parameter.replace("_", "-")


class OptionError(UsageError):
    """A bad value for an option. ``message`` says ``{option}`` where the option is named: ``str()``
    puts the parameter there, ``cli_message`` the flag."""

    def __init__(self, parameter: str, message: str, *, cli_flag: str | None = None):
        self.parameter = parameter
        self.flag = cli_flag or flag(parameter)
        super().__init__(message.replace("{option}", parameter))
        self.cli_message = message.replace("{option}", self.flag)


class DestinationError(UsageError):
    """An output path that may not or cannot be written; the message names it and says why."""


class DestinationExistsError(DestinationError, FileExistsError):
    """The output exists and replacing it was not asked for (``overwrite=True`` / ``--overwrite``)."""

    def __init__(self, destination: Path):
        self.destination = destination
        super().__init__(f"{destination} already exists (pass overwrite=True to replace it)")
        self.cli_message = f"{destination} already exists (pass --overwrite to replace it)"


def cli_message(error: BaseException) -> str:
    """The one line the command line prints for ``error``."""
    message = getattr(error, "cli_message", None)
    if message:
        return message
    if isinstance(error, KeyError) and error.args:  # str(KeyError) adds quotes around the message
        return str(error.args[0])
    return str(error)
