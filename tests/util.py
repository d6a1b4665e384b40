"""Helpers for tests: pydicom's test files, free ports, required peer programs."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file


def testdata(name: str) -> Path:
    """A file from pydicom's or pydicom-data's test files, never downloaded."""
    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"pydicom test file {name!r} is not installed (pydicom-data?)")
    return Path(path)


testdata.__test__ = False  # a helper, not a test, wherever a test module imports it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_binary(*names: str) -> None:
    """Fail (in CI) or skip (elsewhere) when a real peer program (a name on PATH, or the
    absolute path of a file such as an Orthanc plugin) is missing."""
    missing = [n for n in names if shutil.which(n) is None and not (os.path.isabs(n) and os.path.isfile(n))]
    if missing:
        message = f"peer programs missing: {', '.join(missing)} (make test installs them as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
