"""An exclusive lock on a cache folder, so concurrent builders do not race.

Two trainings sharing one ``--cache`` (two ``livseg cv`` runs, or folds on two machines with a
shared file system) may both find a case missing or stale. Without a lock one of them can read a
case while the other swaps it into place. :func:`folder_lock` holds an ``fcntl`` lock on
``<folder>/build.lock`` while a builder checks and builds, so the second waits and then finds the
case fresh. The lock file is kept (removing it would race too). Where ``fcntl`` is missing
(Windows), building is not locked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

__all__ = ["LOCK_FILE", "folder_lock"]

#: The lock file inside a cache folder.
LOCK_FILE = "build.lock"


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if needed) for the ``with`` block."""
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with open(folder / LOCK_FILE, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("%s: another process is building this cache; waiting", folder)
            t0 = time.perf_counter()
            fcntl.flock(fh, fcntl.LOCK_EX)
            logger.info("%s: waited %.1f s", folder, time.perf_counter() - t0)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
