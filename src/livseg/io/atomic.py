"""Atomic, non-clobbering output: write to a temporary file beside the target, then rename.

Every livseg output goes through :func:`atomic_path` (or :func:`write_text_atomic`):

* the file appears complete or not at all (a failed write removes its temporary file);
* an existing file is never replaced unless ``overwrite`` is asked;
* the file gets the permissions of a file the user creates: ``0o666`` less the process umask
  (``0o644`` under the usual umask ``022``), not the ``0o600`` of :func:`tempfile.mkstemp`;
* an operating-system failure (permission denied, disk full, read-only file system, a file
  where a folder should be) is an :class:`~livseg.errors.OutputError` whose one-line message
  names the path, never a traceback.

:func:`check_writable` tells, before any work, whether an output path can be created.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from livseg.errors import OutputError, OutputExistsError

FILE_MODE = 0o666
"""Mode of new files before the umask (as ``open()`` creates them)."""

DIR_MODE = 0o777
"""Mode of new folders before the umask (as ``mkdir`` creates them)."""


def umask_mode(mode: int = FILE_MODE) -> int:
    """``mode`` less the process umask (the umask is read, then restored at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def describe_os_error(path: str | os.PathLike, exc: OSError) -> str:
    """One line naming ``path`` and what the operating system said (e.g. disk full)."""
    reason = {
        errno.ENOSPC: "no space left on the device (disk full)",
        errno.EDQUOT: "disk quota exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "read-only file system",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EEXIST: "exists and is not a folder",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    where = exc.filename if exc.filename is not None else path
    return f"{where}: cannot write: {reason}"


def _first_existing(path: Path) -> Path:
    """``path`` itself or its nearest existing ancestor."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check, before any work, that the file ``path`` can be created (or replaced).

    Args:
        path: the output file.
        overwrite: an existing file may be replaced.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        OutputError: ``path`` is a folder, a part of its folder path is a file, or the folder
            that would hold it (or its nearest existing ancestor) is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; an output file was expected here")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: output exists (use --overwrite to replace it)")
    anchor = _first_existing(path.parent)
    if not anchor.is_dir():
        raise OutputError(f"{anchor}: is a file, so {path} cannot be created in it")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise OutputError(f"{anchor}: permission denied (cannot create {path})")
    return path


def check_folder_writable(folder: str | os.PathLike) -> Path:
    """Check that the output folder ``folder`` exists as a folder or can be created.

    Raises:
        OutputError: ``folder`` is a file, a part of its path is a file, or it (or its nearest
            existing ancestor) is not writable.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: output path exists and is not a folder")
    anchor = _first_existing(folder)
    if not anchor.is_dir():
        raise OutputError(f"{anchor}: is a file, so the folder {folder} cannot be created")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise OutputError(f"{anchor}: permission denied (cannot write into {folder})")
    return folder


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(describe_os_error(path.parent, exc)) from exc


def _create_temp(path: Path) -> Path:
    """An empty new file beside ``path`` keeping its suffixes, created with the umask's mode."""
    suffix = "".join(path.suffixes) or ".tmp"
    stem = path.name.split(".")[0]
    for _ in range(100):
        tmp = path.parent / f".{stem}.{secrets.token_hex(4)}{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(describe_os_error(path, exc)) from exc
        os.close(fd)
        return tmp
    raise OutputError(f"{path}: cannot create a temporary file beside it")  # pragma: no cover


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The temporary name keeps the target's suffixes (so writers that pick a format from the
    extension, e.g. ``.nii.gz``, behave) and is created with mode ``0o666`` less the umask. On
    any exception the temporary file is removed and ``path`` is left untouched.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        OutputError: the folder cannot be created or written, or the write failed in the
            operating system (disk full, permission denied...): one line naming the path.
    """
    path = check_writable(path, overwrite)
    _make_parent(path)
    tmp_path = _create_temp(path)
    try:
        try:
            yield tmp_path
        except OSError as exc:
            raise OutputError(describe_os_error(path, exc)) from exc
        if path.exists() and not overwrite:  # appeared meanwhile
            raise OutputExistsError(f"{path}: output exists (use --overwrite to replace it)")
        try:
            os.replace(tmp_path, path)
        except OSError as exc:
            raise OutputError(describe_os_error(path, exc)) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8).

    Raises:
        OutputExistsError, OutputError: see :func:`atomic_path`.
    """
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
