"""The web console in a real headless Chromium (Selenium + chromedriver), against a real daemon
that received real C-STOREs: log in, a study's timeline, key image and feedback, the performance
page updating, a dead-letter delivery resent to a real Orthanc; a wrong password, a missing CSRF
token and an auditor trying an admin action are refused. Screenshots of the main pages go to
``$SONOSHOT_SCREENSHOTS`` when it is set (docs/console/ holds the committed ones)."""

from __future__ import annotations


import pytest
from selenium.webdriver.common.by import By

from tests.busi_dicom import SITE_SCANNER, choose, study, support_groups
from tests.peers import Orthanc, storescu, wait_for
from tests.scenarios import acknowledged, orthanc_srs, pipeline
from tests.browser import Console, add_users, screenshot_dir
from tests.util import free_port, require_binary

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
    console = Console(browser, f"http://127.0.0.1:{port}", screenshot_dir(tmp_path))
    first, second = list(studies)
    try:
        with daemon:
            result = storescu(daemon.port, [p for _, p in studies.values()])
            assert set(acknowledged(result.stderr).values()) == {"Success"}, result.stderr
            wait_for(lambda: all(daemon.study_state(u) == "dead-letter" for u in studies), timeout=180, interval=0.5,
                     what="both studies dead-letter (the PACS is down)")
            add_users(daemon, monkeypatch)

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
            (detail,) = daemon.query("select detail from events where outcome = 'csrf-refused'")
            assert '"user": "clara"' in detail[0]

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
            console.open("/drift")
            assert "too-few" in browser.find_element(By.ID, "drift").text
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
