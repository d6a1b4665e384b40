"""The packaged demo detector: it loads by name, says what it is, knows its breast scope,
scores and maps a breast image, and matches what ``tools/build_demo_bundle.py`` rebuilds from
the public files its provenance names."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from sonoshot.config import DetectorConfig
from sonoshot.model import demo_bundle_path, load_bundle, load_detector
from sonoshot.model.evaluate import read_manifest
from sonoshot.model.inputs import read_input
from tests import util

DEMO = "demo detector: breast, public data, not validated for this site"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo():
    detector = load_detector(DetectorConfig(bundle="demo"))
    assert detector is not None
    return detector


def test_demo_loads_by_name_and_says_what_it_is(demo, busi: Path) -> None:
    folder = demo_bundle_path()
    assert {p.name for p in folder.iterdir()} == {"bundle.json", "head.pt", "provenance.json"}
    assert sum(p.stat().st_size for p in folder.iterdir()) < 8e6
    assert demo.description == DEMO and demo.scope == {"BodyPartExamined": ("BREAST",)}
    assert demo.state.mode == "labelled" and demo.backbone_name == "efficientnet-lite0"
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["bundle_sha256"] == demo.bundle_sha256
    manifest = {row["file"]: row for row in _manifest_rows(busi)}
    for item in provenance["files"]:
        assert manifest[item["file"]]["sha256"] == item["sha256"]
        assert manifest[item["file"]]["label"] == item["label"]
    assert [s["sha256"] for s in demo.provenance["support"]] == [
        f["sha256"] for f in provenance["files"]]


def _manifest_rows(busi: Path) -> list[dict[str, str]]:
    with open(busi / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_demo_scores_and_maps_a_breast_image_and_refuses_an_echo(demo, busi: Path) -> None:
    used = {f["file"] for f in json.loads((demo_bundle_path() / "provenance.json").read_text())
            ["files"]}
    query = next(e for e in read_manifest(busi) if e.label == 1 and e.file not in used)
    scored = demo.score_image(read_input(busi / query.file, 1))
    (frame_map,) = scored.maps
    assert frame_map.anomaly.shape == (512, 512) and 0 <= scored.score <= 1
    assert frame_map.threshold == pytest.approx(demo.map_threshold)
    echo = pydicom.dcmread(util.testdata("examples_ybr_color.dcm"), stop_before_pixels=True)
    assert "HEART" in demo.scope_problem(echo)
    assert demo.scope_problem(pydicom.dcmread(util.testdata("US1_J2KR.dcm"),
                                              stop_before_pixels=True)) is None


@pytest.mark.slow
def test_rebuild_matches_the_packaged_bundle(demo, busi: Path, tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "tools" / "build_demo_bundle.py"), "--busi",
                    str(busi), "--out", str(tmp_path)], check=True, capture_output=True,
                   timeout=300)
    rebuilt = load_bundle(tmp_path, demo.backbone, demo.config)
    assert rebuilt.provenance["support"] == demo.provenance["support"]
    assert rebuilt.scope == demo.scope and rebuilt.description == demo.description
    assert rebuilt.threshold == pytest.approx(demo.threshold, abs=1e-3)
    np.testing.assert_allclose(rebuilt.state.bank.patches.astype(np.float32),
                               demo.state.bank.patches.astype(np.float32), atol=2e-3)
