"""Fixtures shared by every test module: the shared data folder, free ports, strict writing."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

REPO = Path(__file__).resolve().parent.parent


def _find_shared() -> Path | None:
    env = os.environ.get("SONOSHOT_SHARED")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared", REPO / "shared"]:
        if (candidate / "data").is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared data folder (``../shared`` or ``$SONOSHOT_SHARED``), read in place."""
    path = _find_shared()
    if path is None:
        pytest.fail("shared data not found: set SONOSHOT_SHARED or place shared/ beside the checkout")
    return path


@pytest.fixture(scope="session")
def shared_dicom(shared: Path) -> Path:
    return shared / "data" / "dicom"


@pytest.fixture(scope="session")
def busi(shared: Path) -> Path:
    return shared / "data" / "busi"


def testdata(name: str) -> Path:
    """A file from pydicom's or pydicom-data's test files, never downloaded."""
    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"pydicom test file {name!r} is not installed (pydicom-data?)")
    return Path(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_binary(*names: str) -> None:
    """Fail (in CI) or skip (elsewhere) when a real peer program is missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        message = f"peer programs missing: {', '.join(missing)} (make test installs them as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(autouse=True, scope="session")
def _strict_writing():
    """What sonoshot writes must be valid; reading stays lenient (real devices write bad values)."""
    config = pydicom.config.settings
    before = config.writing_validation_mode
    config.writing_validation_mode = pydicom.config.RAISE
    yield
    config.writing_validation_mode = before
