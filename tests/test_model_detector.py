"""The detector on the real offline backbone (efficientnet-lite0) with real BUSI images and real
ultrasound DICOM files: fit, score, bundle round trip, backbone check, regression scores."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from sonoshot.config import DetectorConfig
from sonoshot.model import (Detector, DetectorError, ImageScore, create_backbone, fit_detector,
                            load_bundle, load_detector, save_bundle)
from sonoshot.model.backbones import Backbone, mask_annotations, prepare_image
from sonoshot.model.evaluate import read_manifest
from sonoshot.model.inputs import InputError, crop_box, even_indices, read_input
from tests import util

CONFIG = DetectorConfig(backbone="efficientnet-lite0", precision="fp32")  # the stored scores are fp32
# Scores of QUERY (normal, normal, abnormal, abnormal) under the detector fitted below
# (seed 0), computed once on CPU (global prototypes, patch memory, lesion probe; docs/model.md).
REGRESSION_SCORES = [0.14713, 0.11265, 0.14545, 0.47363]


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return create_backbone(CONFIG)


@pytest.fixture(scope="module")
def busi_split(busi: Path) -> dict[str, list[Path]]:
    examples = read_manifest(busi)
    normal = [busi / e.file for e in examples if e.label == 0]
    abnormal = [busi / e.file for e in examples if e.label == 1]
    return {"normal": normal[:3], "abnormal": abnormal[:3],
            "query": [normal[40], normal[41], abnormal[100], abnormal[101]]}


@pytest.fixture(scope="module")
def fitted(backbone: Backbone, busi_split: dict[str, list[Path]]):
    normal = [read_input(p, 4) for p in busi_split["normal"]]
    abnormal = [read_input(p, 4) for p in busi_split["abnormal"]]
    return fit_detector(backbone, normal, abnormal, CONFIG, seed=0)


@pytest.mark.regression_test
def test_regression_scores(fitted, busi_split: dict[str, list[Path]]) -> None:
    frames = [read_input(p, 1).frames[0] for p in busi_split["query"]]
    np.testing.assert_allclose(fitted.score_frames(frames), REGRESSION_SCORES, atol=2e-3)


def test_bundle_round_trip_and_backbone_check(fitted, backbone: Backbone, tmp_path: Path,
                                              busi_split: dict[str, list[Path]]) -> None:
    scoped = Detector(fitted.backbone, fitted.state, CONFIG, fitted.provenance,
                      {"BodyPartExamined": ("BREAST",)}, "fitted in a test")
    digest = save_bundle(scoped, tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["format_version"] == 2 and meta["backbone"]["sha256"] == backbone.sha256
    assert meta["scope"] == {"BodyPartExamined": ["BREAST"]}
    assert meta["description"] == "fitted in a test"
    assert [s["sha256"] for s in meta["support"]] == [
        read_input(p, 1).sha256 for p in busi_split["normal"] + busi_split["abnormal"]]
    assert meta["metrics"]["support_accuracy"] == 1.0 and meta["mode"] == "labelled"
    config = dataclasses.replace(CONFIG, bundle=str(tmp_path / "b"), threshold=0.7)
    loaded = load_detector(config)
    assert loaded is not None and loaded.bundle_sha256 == digest and loaded.threshold == 0.7
    assert loaded.state.bank is not None and np.array_equal(loaded.state.bank.patches,
                                                            fitted.state.bank.patches)
    assert loaded.scope == {"BodyPartExamined": ("BREAST",)}
    assert loaded.description == "fitted in a test"
    assert loaded.state.map_threshold == pytest.approx(fitted.state.map_threshold)
    frames = [read_input(p, 1).frames[0] for p in busi_split["query"]]
    np.testing.assert_allclose(loaded.score_frames(frames), fitted.score_frames(frames), rtol=1e-6)
    query = read_input(busi_split["query"][3], 1)
    (ours,), (theirs,) = fitted.score_image(query).maps, loaded.score_image(query).maps
    np.testing.assert_allclose(ours.anomaly, theirs.anomaly, rtol=1e-5, atol=1e-5)

    assert loaded.state.probe is not None and loaded.state.probe_scale == fitted.state.probe_scale
    old = {k: v for k, v in meta.items()
           if k not in ("scope", "description", "map_threshold", "probe")}
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(old))  # format 2 before scopes
    before = load_bundle(tmp_path / "b", backbone, CONFIG)
    assert before.scope == {} and before.description == "" and before.state.probe is None
    t = fitted.state.threshold
    assert before.map_threshold == pytest.approx(np.log(t / (1 - t)))  # the image threshold's
    (tmp_path / "b" / "bundle.json").write_text(json.dumps({**meta, "scope": {"Bad": ["X"]}}))
    with pytest.raises(DetectorError, match="bad scope"):
        load_bundle(tmp_path / "b", backbone, CONFIG)
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))

    class OtherWeights(type(backbone)):  # the same network, other weights on disk
        def __init__(self) -> None:
            self.__dict__.update(backbone.__dict__)
            self.sha256 = "0" * 64

    with pytest.raises(DetectorError, match="fitted on backbone efficientnet-lite0"):
        load_bundle(tmp_path / "b", OtherWeights(), CONFIG)
    meta["format_version"] = 99
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(DetectorError, match="bundle format 99"):
        load_bundle(tmp_path / "b", backbone, CONFIG)


def test_no_bundle_and_no_text_tower_gives_none() -> None:
    assert load_detector(CONFIG) is None


def test_score_dicom_cine_and_study_aggregation(fitted) -> None:
    ds = pydicom.dcmread(util.testdata("examples_ybr_color.dcm"))
    scores = fitted.score_dataset(ds)
    assert scores[0].sop_instance_uid == ds.SOPInstanceUID and scores[0].frames == (0, 10, 19, 29)
    assert 0.0 <= scores[0].score <= 1.0
    assert [m.frame for m in scores[0].maps] == [0, 10, 19, 29]
    assert all(m.anomaly.shape == (ds.Rows, ds.Columns) for m in scores[0].maps)
    assert scores[0].score == max(m.score for m in scores[0].maps)
    images = [ImageScore("a", (0,), 0.9), ImageScore("b", (0,), 0.5), ImageScore("c", (0,), 0.1),
              ImageScore("d", (0,), 0.3)]
    expected = {"max": 0.9, "top3-mean": (0.9 + 0.5 + 0.3) / 3, "mean": 0.45}
    for agg, value in expected.items():
        fitted.config = dataclasses.replace(CONFIG, study_aggregation=agg)
        assert fitted.study_score(images) == pytest.approx(value)
    fitted.config = CONFIG
    with pytest.raises(ValueError, match="scores"):
        fitted.study_score([])


def test_dicom_crop_to_largest_region(shared_dicom: Path) -> None:
    ds = pydicom.dcmread(shared_dicom / "orthanc-Issue16.dcm")
    box = crop_box(ds)
    assert box is not None
    image = read_input(shared_dicom / "orthanc-Issue16.dcm", 3)
    x0, y0, x1, y1 = box
    assert image.frame_indices == (0, 16, 33)
    assert image.frames[0].shape[:2] == (y1 - y0 + 1, x1 - x0 + 1)
    assert crop_box(pydicom.dcmread(shared_dicom / "orthanc-PrivateTags.dcm")) is None
    assert even_indices(3, 4) == [0, 1, 2] and even_indices(10, 2) == [0, 9]


def test_unreadable_inputs_are_named(shared_dicom: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dcm4che-will-jxl.dcm: not a decodable DICOM"):
        read_input(shared_dicom / "dcm4che-will-jxl.dcm", 2)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError, match="broken.png: not a readable image"):
        read_input(bad, 1)


def test_too_few_examples(backbone: Backbone, busi_split: dict[str, list[Path]]) -> None:
    normal = [read_input(p, 1) for p in busi_split["normal"][:1]]
    with pytest.raises(DetectorError, match="too few examples"):
        fit_detector(backbone, normal, normal, dataclasses.replace(CONFIG, min_shots=2))


def test_mask_fills_coloured_overlay() -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(40, 90, (64, 64), dtype=np.uint8)
    image = np.repeat(grey[:, :, None], 3, axis=2)
    image[30:33, 10:50] = (255, 255, 0)  # yellow calliper line
    image[50, 5:30] = 250  # one-pixel white text stroke
    tensor = torch.from_numpy(image).permute(2, 0, 1).float()
    out = mask_annotations(tensor).permute(1, 2, 0).numpy()
    assert out[31, 10:50].max() < 120 and out[50, 5:30].max() < 120
    assert np.array_equal(out[:20], image[:20])
    clean = torch.from_numpy(np.repeat(grey[:, :, None], 3, axis=2)).permute(2, 0, 1).float()
    assert mask_annotations(clean) is clean  # nothing to mask: the frame as it was


def _three_planes_prepared(frame: np.ndarray, size: int) -> torch.Tensor:
    """prepare_image's letterbox and resize, on all three planes materialised."""
    rgb = np.repeat(frame[:, :, None], 3, axis=2) if frame.ndim == 2 else frame
    x = mask_annotations(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().contiguous())
    x = x.contiguous()
    h, w = x.shape[1:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = torch.nn.functional.pad(x, (left, side - w - left, top, side - h - top))[None] / 255
    return torch.nn.functional.interpolate(square, size=(size, size), mode="bilinear", antialias=True,
                                           align_corners=False)[0]


def test_a_grey_frame_is_prepared_once_with_the_same_values(shared_dicom: Path, busi: Path) -> None:
    """A monochrome frame, or one the mask turned grey, is letterboxed and resized as one plane:
    the values are those of all three planes resized (real ultrasound frames, a BUSI image)."""
    cine = read_input(shared_dicom / "orthanc-Issue16.dcm", 2).frames
    busi_image = read_input(busi / read_manifest(busi)[7].file, 1).frames[0]
    for frame in (*cine, busi_image, busi_image[:, :, 0].copy()):
        prepared = prepare_image(frame, 320)
        assert prepared.shape == (3, 320, 320) and prepared.is_contiguous()
        assert torch.equal(prepared, _three_planes_prepared(frame, 320))
