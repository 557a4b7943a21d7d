"""Atomic, non-clobbering output: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from livseg.errors import OutputExistsError


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raise :class:`OutputExistsError` if ``path`` exists and ``overwrite`` is False."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: output exists (use --overwrite to replace it)")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The temporary name keeps the target's suffixes (so writers that pick a format from the
    extension, e.g. ``.nii.gz``, behave). On any exception the temporary file is removed and
    ``path`` is left untouched.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name.split('.')[0]}.", suffix=suffix, dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if path.exists() and not overwrite:  # appeared meanwhile
            raise OutputExistsError(f"{path}: output exists (use --overwrite to replace it)")
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
