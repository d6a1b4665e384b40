"""Fixtures shared by every test module: the shared data folder, free ports, strict writing."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest


REPO = Path(__file__).resolve().parent.parent


def find_shared() -> Path | None:
    env = os.environ.get("SONOSHOT_SHARED")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared", REPO / "shared"]:
        if (candidate / "data").is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared data folder (``../shared`` or ``$SONOSHOT_SHARED``), read in place."""
    path = find_shared()
    if path is None:
        pytest.fail("shared data not found: set SONOSHOT_SHARED or place shared/ beside the checkout")
    return path


@pytest.fixture(scope="session")
def shared_dicom(shared: Path) -> Path:
    return shared / "data" / "dicom"


@pytest.fixture(scope="session")
def busi(shared: Path) -> Path:
    return shared / "data" / "busi"


@pytest.fixture(scope="session")
def demo_bundle(busi: Path, tmp_path_factory) -> Path:
    """A real detector bundle from ``sonoshot fit`` on 4 + 4 BUSI images, fitted once per run."""
    from tests.daemon import fit_demo_bundle

    return fit_demo_bundle(busi, tmp_path_factory.mktemp("demo-bundle"))


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium driven by Selenium (tests/browser.py), quit after the test."""
    from tests.browser import start_chromium

    driver = start_chromium(tmp_path)
    yield driver
    driver.quit()


@pytest.fixture(autouse=True, scope="session")
def _strict_writing():
    """What sonoshot writes must be valid; reading stays lenient (real devices write bad values)."""
    config = pydicom.config.settings
    before = config.writing_validation_mode
    config.writing_validation_mode = pydicom.config.RAISE
    yield
    config.writing_validation_mode = before
