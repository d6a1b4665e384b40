"""Headless Chromium for the console tests (Selenium with Debian's chromium and chromedriver),
the console's accounts, and where screenshots go: ``$SONOSHOT_SCREENSHOTS`` when set (the
committed ones in docs/console/ come from there), else the test's temporary folder."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from sonoshot.cli import main
from tests.peers import wait_for
from tests.util import require_binary

PASSWORDS = {"clara": "clinician-password-1", "audrey": "auditor-password-22", "adam": "admin-password-333"}
ROLES = {"clara": "clinician", "audrey": "auditor", "adam": "admin"}
WIDTH, HEIGHT = 1400, 1000


def screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SONOSHOT_SCREENSHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def add_users(daemon, monkeypatch) -> None:
    """One account per role, through ``sonoshot users add --password-stdin``."""
    for name, password in PASSWORDS.items():
        monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
        assert main(["--config", str(daemon.config_path), "users", "add", name, "--role", ROLES[name],
                     "--password-stdin"]) == 0


def start_chromium(tmp_path: Path) -> webdriver.Chrome:
    """Headless Chromium with its own profile under ``tmp_path`` (the ``browser`` fixture quits it)."""
    require_binary("chromium", "chromedriver")
    options = Options()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={WIDTH},{HEIGHT}", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    driver.implicitly_wait(5)  # an element of a page still loading after a click is waited for
    return driver


class Console:
    """The browser pointed at one daemon's console."""

    def __init__(self, driver, base: str, shots: Path) -> None:
        self.driver, self.base, self.shots = driver, base, shots

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def text(self) -> str:
        return self.driver.find_element(By.TAG_NAME, "body").text

    def login(self, name: str, password: str | None = None) -> None:
        self.open("/login")
        self.driver.find_element(By.ID, "name").send_keys(name)
        self.driver.find_element(By.ID, "password").send_keys(password or PASSWORDS[name])
        self.driver.find_element(By.ID, "login").click()
        wait_for(lambda: self.driver.find_elements(By.ID, "login-error") or self.driver.find_elements(By.ID, "logout"),
                 timeout=30, what="the login to be answered")

    def logout(self) -> None:
        self.driver.find_element(By.ID, "logout").click()
        assert self.driver.find_element(By.ID, "login-form")

    def shot(self, name: str) -> None:
        """A screenshot of the whole page (the window grown to its height for the moment)."""
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(WIDTH, min(height + 120, 5000))
        self.driver.save_screenshot(str(self.shots / f"{name}.png"))
        self.driver.set_window_size(WIDTH, HEIGHT)


