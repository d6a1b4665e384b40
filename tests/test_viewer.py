"""Seen in a real viewer: the key image sonoshot sent back, in Orthanc's explorer and its web
viewer plugin (Debian ``orthanc-webviewer``), rendered by headless Chromium.

The breast cine goes from Orthanc to sonoshot (the packaged demo detector) and its SR and key
image come back; the browser then opens the study in Orthanc Explorer, where the key image's
series must be listed, and the key image series in the web viewer, where the image request must
succeed and the canvas must show the map's colours. Screenshots of both pages are left in the
test's folder (``docs/viewer-*.png`` are copies from a run).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from tests.breast import PATIENT, breast_cine
from tests.peers import Orthanc, wait_for
from tests.scenarios import demo_pipeline, documents
from tests.util import require_binary

WEB_VIEWER = "/usr/share/orthanc/plugins/libOrthancWebViewer.so"
KEY_SERIES = "sonoshot anomaly map - not for diagnostic use"

pytestmark = pytest.mark.slow


@pytest.fixture
def browser():
    """Headless Chromium through chromedriver, logging the network (DevTools performance log)."""
    require_binary("chromium", "chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,860"):
        options.add_argument(argument)
    options.binary_location = "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _responses(driver) -> dict[str, int]:
    """URL -> HTTP status of every response the page received so far."""
    out = {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.responseReceived":
            response = message["params"]["response"]
            out[response["url"]] = response["status"]
    return out


CANVAS_COLOURS = """
const canvas = document.querySelector('#dicomImage canvas');
if (!canvas || !canvas.width) return null;
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let drawn = 0, red = 0;
for (let i = 0; i < data.length; i += 4) {
  if (data[i] + data[i + 1] + data[i + 2] > 30) drawn++;
  if (data[i] > 150 && data[i] > data[i + 1] + 60 && data[i] > data[i + 2] + 60) red++;
}
return [drawn, red];
"""


def test_key_image_is_listed_in_the_study_and_rendered_by_the_web_viewer(tmp_path, busi, browser):
    pacs = Orthanc(tmp_path / "orthanc", plugins=[WEB_VIEWER])
    daemon = demo_pipeline(tmp_path, pacs)
    cine = breast_cine(busi, tmp_path / "cine.dcm")
    with pacs, daemon:
        assert "web-viewer" in pacs.rest("/plugins")
        study = pacs.upload(tmp_path / "cine.dcm")["ParentStudy"]
        pacs.rest("/modalities/sonoshot/store", "POST", {"Resources": [study], "Synchronous": True})
        sent = wait_for(lambda: documents(pacs, cine.StudyInstanceUID, 2), timeout=300, interval=1,
                        what="the SR and the key image in Orthanc")
        (key,) = [d for d in sent if d.Modality == "OT"]
        (key_instance,) = pacs.rest("/tools/find", "POST", {"Level": "Instance",
                                                            "Query": {"SOPInstanceUID": key.SOPInstanceUID}})
        key_series = pacs.rest(f"/instances/{key_instance}")["ParentSeries"]
        base = f"http://127.0.0.1:{pacs.http_port}"

        browser.get(f"{base}/app/explorer.html#study?uuid={study}")
        listed = wait_for(lambda: [li.text for li in browser.find_elements("css selector", "#list-series li")
                                   if KEY_SERIES in li.text], timeout=30, interval=0.5,
                          what="the key image series in Orthanc Explorer's study page")
        assert "Modality: OT" in listed[0] and "SeriesNumber: 9903" in listed[0]
        series_texts = " ".join(li.text for li in browser.find_elements("css selector", "#list-series li"))
        assert "sonoshot anomaly detection - not for diagnostic use" in series_texts  # the SR's series too
        browser.save_screenshot(str(tmp_path / "viewer-study.png"))

        browser.get(f"{base}/web-viewer/app/viewer.html?series={key_series}")
        colours = wait_for(lambda: (lambda c: c if c and c[1] > 500 else None)(
            browser.execute_script(CANVAS_COLOURS)), timeout=60, interval=0.5,
            what="the key image drawn on the web viewer's canvas")
        drawn, red = colours
        assert drawn > 100_000  # most of a 1280 x 860 canvas shows the image
        time.sleep(0.5)  # the overlay text settles
        responses = _responses(browser)
        image_requests = {url: status for url, status in responses.items()
                          if "/web-viewer/instances/" in url and key_instance in url}
        assert image_requests and set(image_requests.values()) == {200}, responses
        assert responses[next(u for u in responses if f"/web-viewer/series/{key_series}" in u)] == 200
        top_right = browser.find_element("id", "topright").text
        assert KEY_SERIES in top_right and PATIENT[1] in top_right
        screenshot = tmp_path / "viewer-key-image.png"
        browser.save_screenshot(str(screenshot))
        pixels = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
        reddish = (pixels[:, :, 0] > 150) & (pixels[:, :, 0] > pixels[:, :, 1] + 60) & \
                  (pixels[:, :, 0] > pixels[:, :, 2] + 60)
        assert reddish.sum() > 500  # the screenshot itself shows the map (and the red warning text)
