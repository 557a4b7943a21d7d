"""Expected errors: bad input a user can fix. The CLI prints them as one line, no traceback."""

from __future__ import annotations


class LivsegError(Exception):
    """An expected, user-facing error (bad file, bad option, mismatched geometry...).

    The message must name the file or option concerned and the problem.
    """


class InputError(LivsegError):
    """An input file or folder cannot be read or is not what it must be."""


class OutputError(LivsegError):
    """An output cannot be written (permission denied, disk full, a file where a folder must
    be...)."""


class OutputExistsError(OutputError):
    """An output exists and ``overwrite`` was not requested."""
