"""The web console in a real headless Chromium (Selenium + chromedriver), against a real daemon
that received real C-STOREs: log in, a study's timeline, key image and feedback, the performance
page updating, a dead-letter delivery resent to a real Orthanc; a wrong password, a missing CSRF
token and an auditor trying an admin action are refused. Screenshots of the main pages go to
``$SONOSHOT_SCREENSHOTS`` when it is set (docs/console/ holds the committed ones)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from sonoshot.cli import main
from tests.busi_dicom import SITE_SCANNER, choose, study, support_groups
from tests.peers import Orthanc, storescu, wait_for
from tests.scenarios import acknowledged, orthanc_srs, pipeline
from tests.util import free_port, require_binary

PASSWORDS = {"clara": "clinician-password-1", "audrey": "auditor-password-22", "adam": "admin-password-333"}
ROLES = {"clara": "clinician", "audrey": "auditor", "adam": "admin"}


@pytest.fixture
def browser(tmp_path):
    require_binary("chromium", "chromedriver")
    options = Options()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1100", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


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

    def logout(self) -> None:
        self.driver.find_element(By.ID, "logout").click()
        assert "/login" in self.driver.current_url

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(self.shots / f"{name}.png"))


def _add_users(daemon, monkeypatch) -> None:
    for name, password in PASSWORDS.items():
        monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
        assert main(["--config", str(daemon.config_path), "users", "add", name, "--role", ROLES[name],
                     "--password-stdin"]) == 0


def _feedback_rows(daemon) -> int:
    return daemon.query("select count(*) from feedback")[0][0]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_console_in_a_real_browser(tmp_path, busi, demo_bundle, browser, monkeypatch):
    require_binary("storescu")
    pacs = Orthanc(tmp_path / "orthanc")  # started only later: deliveries dead-letter first
    port = free_port()
    daemon = pipeline(tmp_path / "sonoshot", demo_bundle,
                      [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}],
                      delivery={"max_attempts": 1},
                      console={"enabled": True, "port": port, "secret_key_file": str(tmp_path / "console.key")})
    normal, abnormal = choose(busi, 1, support_groups(busi))
    studies = {}
    for n, (example, label) in enumerate(((abnormal, "abnormal"), (normal, "normal"))):
        uid, path = study(busi, example, SITE_SCANNER, tmp_path / "studies", n)
        studies[uid] = (label, path)
    shots = Path(os.environ.get("SONOSHOT_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    console = Console(browser, f"http://127.0.0.1:{port}", shots)
    first, second = list(studies)
    try:
        with daemon:
            result = storescu(daemon.port, [p for _, p in studies.values()])
            assert set(acknowledged(result.stderr).values()) == {"Success"}, result.stderr
            wait_for(lambda: all(daemon.study_state(u) == "dead-letter" for u in studies), timeout=180, interval=0.5,
                     what="both studies dead-letter (the PACS is down)")
            _add_users(daemon, monkeypatch)

            console.open("/studies")
            assert "/login" in browser.current_url
            console.shot("login")
            console.login("clara", "not-the-password")
            assert "Wrong user name or password." in console.text()
            assert daemon.query("select count(*) from events where kind = 'console' and outcome = 'login-failed'") \
                == [(1,)]

            console.login("clara")
            console.open("/performance")
            assert browser.find_element(By.ID, "no-labels")
            console.open("/studies")
            assert first in console.text() and second in console.text()
            browser.find_element(By.LINK_TEXT, first).click()
            timeline = browser.find_element(By.ID, "timeline").text
            for step in ("complete", "deid", "result", "dead-letter"):
                assert step in timeline, timeline
            assert browser.find_element(By.ID, "state").text == "dead-letter"
            assert browser.find_element(By.ID, "verdict-1").text in ("normal", "abnormal")
            key_image = browser.find_element(By.ID, "key-image")
            assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", key_image) > 0

            # A finding that names the patient is refused and not stored.
            browser.find_element(By.ID, "label-abnormal").click()
            browser.find_element(By.ID, "finding").send_keys("lesion, patient Validation Patient0000")
            browser.find_element(By.ID, "submit-feedback").click()
            assert "refused" in browser.find_element(By.ID, "flash").text and _feedback_rows(daemon) == 0

            # A form without its CSRF token is refused.
            browser.find_element(By.ID, "label-abnormal").click()
            browser.execute_script("document.querySelector('#feedback-form input[name=csrf_token]').remove()")
            browser.find_element(By.ID, "submit-feedback").click()
            assert "CSRF token is missing" in browser.find_element(By.ID, "refused").text
            assert _feedback_rows(daemon) == 0

            for uid, (label, _) in studies.items():
                console.open(f"/studies/{uid}")
                browser.find_element(By.ID, f"label-{label}").click()
                browser.find_element(By.ID, "finding").send_keys("solid mass 12 mm" if label == "abnormal" else "")
                browser.find_element(By.ID, "submit-feedback").click()
                assert f"Label '{label}' recorded." in browser.find_element(By.ID, "flash").text
                assert "console" in browser.find_element(By.ID, "labels").text
            console.open(f"/studies/{first}")
            console.shot("study")
            console.open("/performance")
            assert browser.find_element(By.CLASS_NAME, "labelled").text == "2"
            assert browser.find_element(By.CLASS_NAME, "auroc").text[:1] in "01"
            console.shot("performance")
            console.open("/drift")
            assert "too-few" in browser.find_element(By.ID, "drift").text
            console.shot("drift")
            console.logout()

            console.login("audrey")
            console.open("/queues")
            assert not browser.find_elements(By.CLASS_NAME, "resend")  # no button for an auditor...
            token = browser.execute_script("return document.querySelector('input[name=csrf_token]').value")
            browser.execute_script(  # ... and posting the admin form by hand is refused
                "const f = document.createElement('form'); f.method = 'post'; f.action = '/queues/resend';"
                "f.innerHTML = '<input name=csrf_token value=' + arguments[0] + '>'; document.body.append(f);"
                "f.submit();", token)
            assert "auditor role may not do this" in browser.find_element(By.ID, "refused").text
            assert daemon.query("select count(*) from deliveries where state = 'dead-letter'") == [(2,)]
            console.open("/audit")
            exported = browser.execute_async_script(
                "const done = arguments[0]; fetch('/audit/export?format=csv&since=7d')"
                ".then(r => r.text()).then(done)")
            lines = exported.splitlines()
            assert lines[0].startswith("study_instance_uid,patient_pseudonym") and len(lines) == 3
            console.shot("audit")
            console.logout()

            console.login("adam")
            console.open("/queues")
            assert first in browser.find_element(By.ID, "dead-letters").text
            console.shot("queues")
            with pacs:
                row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#dead-letters tr") if first in r.text)
                row.find_element(By.CLASS_NAME, "resend").click()
                assert "1 deliveries queued again." in browser.find_element(By.ID, "flash").text
                wait_for(lambda: daemon.study_state(first) == "delivered", timeout=60, what="the resent SR delivered")
                assert len(orthanc_srs(pacs, first)) == 1
                assert daemon.study_state(second) == "dead-letter"
            actions = {o for (o,) in daemon.query("select outcome from events where kind = 'console'")}
            assert {"login", "login-failed", "logout", "viewed", "feedback", "feedback-refused", "csrf-refused",
                    "refused", "export", "resend"} <= actions
    finally:
        pacs.stop()
