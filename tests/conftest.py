"""Shared test fixtures. Real-data tests skip with a reason when ../shared/data is absent."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# exported ONNX networks (livseg.infer.backend) go to a fresh folder, never the user's cache;
# subprocesses inherit it
os.environ.setdefault("LIVSEG_CACHE", tempfile.mkdtemp(prefix="livseg-test-cache-"))
SHARED_DATA = Path(os.environ.get("LIVSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real CT data not available: {path} is absent (it lives in ../shared/data)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ../shared/data folder (skips the test when absent)."""
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def lits_dir(shared_data: Path) -> Path:
    return _need(shared_data / "lits")


@pytest.fixture(scope="session")
def radct_dir(shared_data: Path) -> Path:
    return _need(shared_data / "dicom" / "radct-2022")
