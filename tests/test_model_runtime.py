"""How the detector runs: precision and thread settings (config, CLI, daemon), bundles that
record their precision, and scoring many images (of one study or of several) in shared batches
(efficientnet-lite0 on real BUSI images and real ultrasound DICOM frames)."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import generate_uid

from sonoshot.cli import main
from sonoshot.config import ConfigError, DetectorConfig, parse_config
from sonoshot.model import Detector, create_backbone, fit_detector, load_detector, save_bundle
from sonoshot.model.backbones import (
    EfficientNetLite0,
    LiteFeatures,
    fold_batch_norms,
    load_efficientnet_lite0,
    prepare_image,
)
from sonoshot.model.batching import SharedScorer
from sonoshot.model.evaluate import read_manifest
from sonoshot.model.inputs import InputImage, dataset_frames, read_input
from sonoshot.model.pipeline import embed_frames, in_background
from sonoshot.model.runtime import default_threads, native_bf16, resolve_precision, usable_cores
from tests.daemon import Daemon
from tests.peers import dcmsend, wait_for

FP32 = DetectorConfig(backbone="efficientnet-lite0", precision="fp32")
CINES = ("orthanc-Issue16.dcm", "dcm4che-US-PAL-8-10x-echo", "orthanc-1.2.840.10008.1.2.4.50.dcm")


@pytest.fixture(scope="module")
def support(busi: Path) -> dict[str, list[InputImage]]:
    examples = read_manifest(busi)
    return {label: [read_input(busi / e.file, 1) for e in examples if e.label == value][:3]
            for label, value in (("normal", 0), ("abnormal", 1))}


@pytest.fixture(scope="module")
def fitted(support: dict[str, list[InputImage]]):
    return fit_detector(create_backbone(FP32), support["normal"], support["abnormal"], FP32, 0)


@pytest.fixture(scope="module")
def images(shared_dicom: Path, busi: Path) -> list[InputImage]:
    """Real ultrasound instances (4, 4 and 1 sampled frames) and a BUSI image: 10 frames, so
    micro-batches of 4 straddle instances."""
    dicom = [dataset_frames(pydicom.dcmread(shared_dicom / name), 4) for name in CINES]
    return [*dicom, read_input(busi / read_manifest(busi)[120].file, 1)]


@pytest.mark.parametrize(("table", "key", "expected"), [
    ({"detector": {"precision": "fp8"}}, "detector.precision", "one of 'auto', 'fp32'"),
    ({"detector": {"precision": "fp16"}}, "detector.precision", "fp16 needs a CUDA"),
    ({"detector": {"threads": -1}}, "detector.threads", "from 0 to 1024"),
    ({"detector": {"threads": "all"}}, "detector.threads", "an integer"),
])
def test_bad_precision_and_threads_name_the_key(table, key, expected) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(table)
    assert raised.value.key == key and expected in str(raised.value)


def test_bad_precision_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[detector]\nprecision = "half"\n')
    assert main(["--config", str(bad), "serve"]) == 2
    assert "detector.precision" in capsys.readouterr().err
    assert main(["eval", "--data", str(tmp_path), "--report", str(tmp_path / "r"),
                 "--precision", "half"]) == 2
    assert "--precision" in capsys.readouterr().err
    assert main(["fit", "--normal", str(tmp_path), "--out", str(tmp_path / "b"),
                 "--precision", "fp16"]) == 2  # fp16 is CUDA only; the default device is cpu
    assert "fp16 needs a CUDA" in capsys.readouterr().err


def test_precision_resolution() -> None:
    assert resolve_precision("auto") == ("bf16" if native_bf16() else "fp32")
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match='"precision"'):
        resolve_precision("int8")


def test_folded_batch_norms_change_nothing_but_the_operators(busi: Path) -> None:
    """On CPU, EfficientNet-Lite0 runs folded (no BatchNorm left, symmetric padding inside the
    convolutions) as one frozen TorchScript graph at fp32 and at bf16. On real BUSI images,
    folding leaves the fp32 embeddings and patch features as they were within float rounding,
    the fp32 graph gives the folded network's outputs bit for bit at every batch size up to
    the micro-batch, and the bf16 graph computes in bf16, as close to fp32 as the trained network
    at bf16 is (the AUROC at both precisions is in docs/benchmarks.md)."""
    trained = load_efficientnet_lite0()[0].to(memory_format=torch.channels_last)
    fp32, bf16 = EfficientNetLite0(precision="fp32"), EfficientNetLite0(precision="bf16")
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in trained.modules()) == 49
    for backbone in (fp32, bf16):
        assert isinstance(backbone.features, torch.jit.ScriptModule)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.net.modules())
        pads = sum(isinstance(m, torch.nn.ZeroPad2d) for m in backbone.net.modules())
        assert 0 < pads < sum(isinstance(m, torch.nn.ZeroPad2d) for m in trained.modules())
    examples = read_manifest(busi)
    batch = fp32.normalise(torch.stack([
        prepare_image(read_input(busi / examples[n].file, 1).frames[0], 320)
        for n in (0, 140, 300, 369)])).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        before = LiteFeatures(trained)(batch)  # fp32 forward of the network as trained
        net = copy.deepcopy(trained)
        fold_batch_norms(net)
        after = LiteFeatures(net)(batch)
        for old, new in zip(before, after):
            assert torch.allclose(old, new, atol=2e-5), (old - new).abs().max()
        for size in (4, 3, 1, 2):
            for eager, graph in zip(LiteFeatures(fp32.net)(batch[:size]),
                                    fp32.features(batch[:size])):
                assert torch.equal(eager, graph), (eager - graph).abs().max()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            trained_bf16 = LiteFeatures(trained)(batch)
    assert torch.equal(fp32.forward_features(batch)[0], after[0])
    cosine = torch.nn.functional.cosine_similarity
    for old, as_trained, folded in zip(before, trained_bf16, bf16.forward_features(batch)):
        assert (old - folded).abs().max() > 1e-4  # bf16 rounding: not an fp32 forward
        # as close to fp32 as bf16 of the trained network is (embeddings, patch features)
        reference = cosine(old, as_trained.float(), dim=-1).min()
        assert cosine(old, folded, dim=-1).min() > reference - 0.005
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(copy.deepcopy(trained).train())


def test_threads_apply_to_threads_started_later() -> None:
    """In a fresh process: the default leaves one core, and a worker thread started after
    apply_threads (as the daemon's are) runs with the count set."""
    code = ("import threading, torch\n"
            "from sonoshot.model.runtime import apply_threads\n"
            "seen = []\n"
            "def worker():\n"
            "    torch.ones(64, 64) @ torch.ones(64, 64)\n"
            "    seen.append(torch.get_num_threads())\n"
            "for n in (0, 3, 1):\n"
            "    applied = apply_threads(n)\n"
            "    t = threading.Thread(target=worker); t.start(); t.join()\n"
            "    print(applied, seen[-1])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True).stdout.split()
    assert out == [str(default_threads()), str(default_threads()), "3", "3", "1", "1"]
    assert default_threads() == max(1, usable_cores() - 1)


def test_batched_scores_equal_one_at_a_time(fitted, images: list[InputImage]) -> None:
    alone = [fitted.score_image(image) for image in images]
    batched = fitted.score_images(images)
    assert [(s.sop_instance_uid, s.frames) for s in batched] == [
        (s.sop_instance_uid, s.frames) for s in alone]
    assert [len(s.frames) for s in batched] == [4, 4, 1, 1]
    np.testing.assert_allclose([s.score for s in batched], [s.score for s in alone], atol=1e-5)
    for one, many in zip(alone, batched):  # the maps too, on each instance's own grid
        assert [m.frame for m in many.maps] == list(one.frames)
        for a, b in zip(one.maps, many.maps):
            np.testing.assert_allclose(b.anomaly, a.anomaly, atol=1e-4)
    lazy = fitted.score_images(image for image in images)  # a generator, read in the background
    np.testing.assert_allclose([s.score for s in lazy], [s.score for s in alone], atol=1e-5)
    assert fitted.score_images([]) == []
    with pytest.raises(ValueError, match="'empty' has no frames"):
        fitted.score_images([images[0], InputImage("empty", "", (), ())])


def test_preparation_beside_the_forward_changes_nothing(fitted, images) -> None:
    frames = [f for image in images for f in image.frames][:6]
    inline = embed_frames(fitted.backbone, frames, overlap=False)
    beside = embed_frames(fitted.backbone, iter(frames), overlap=True)
    assert inline[0].shape == (6, 4, 1600) and inline[1].shape == (6, 4, 100, 320)
    np.testing.assert_array_equal(inline[0], beside[0])
    np.testing.assert_array_equal(inline[1], beside[1])


def test_background_iteration_raises_and_stops() -> None:
    def failing():
        yield 1
        raise RuntimeError("decoder broke")

    with pytest.raises(RuntimeError, match="decoder broke"):
        list(in_background(failing()))
    before = threading.active_count()
    endless = in_background(iter(range(10**9)), depth=2)
    assert next(endless) == 0
    endless.close()  # the consumer stops early: the producer thread ends too
    assert threading.active_count() == before


def test_bundle_records_precision(fitted, support, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    save_bundle(fitted, tmp_path / "fp32")
    assert json.loads((tmp_path / "fp32" / "bundle.json").read_text())["precision"] == "fp32"
    auto = dataclasses.replace(FP32, precision="auto", bundle=str(tmp_path / "fp32"))
    with caplog.at_level(logging.WARNING, logger="sonoshot.model.detector"):
        assert load_detector(auto).precision == "fp32"  # auto keeps the validated precision
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="sonoshot.model.detector"):
        loaded = load_detector(dataclasses.replace(auto, precision="bf16"))
    assert loaded.precision == "bf16"
    assert "validated at fp32, running at bf16" in caplog.text
    bf16 = dataclasses.replace(FP32, precision="bf16")
    fitted_bf16 = fit_detector(create_backbone(bf16), support["normal"], support["abnormal"],
                               bf16, 0)
    save_bundle(fitted_bf16, tmp_path / "bf16")
    meta = json.loads((tmp_path / "bf16" / "bundle.json").read_text())
    assert meta["precision"] == "bf16"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sonoshot.model.detector"):
        again = load_detector(dataclasses.replace(auto, bundle=str(tmp_path / "bf16")))
    # a CPU without native bf16 runs a bf16 bundle at fp32, and says so
    assert again.precision == ("bf16" if native_bf16() else "fp32")
    assert bool(caplog.records) is not native_bf16()
    frames = [im.frames[0] for im in support["normal"]]
    np.testing.assert_allclose(again.score_frames(frames), fitted_bf16.score_frames(frames),
                               atol=1e-6 if native_bf16() else 0.1)
    assert meta["backbone"]["form"] == "folded"
    del meta["backbone"]["form"]  # as written before the form was recorded: the trained network
    (tmp_path / "bf16" / "bundle.json").write_text(json.dumps(meta))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sonoshot.model.detector"):
        load_detector(dataclasses.replace(auto, precision="bf16", bundle=str(tmp_path / "bf16")))
    assert "validated at bf16 with its network trained, now running it folded" in caplog.text


@pytest.mark.slow
def test_daemon_applies_threads_and_reports_precision(tmp_path: Path, demo_bundle: Path) -> None:
    validated = json.loads((demo_bundle / "bundle.json").read_text())["precision"]
    other = "fp32" if validated == "bf16" else "bf16"
    daemon = Daemon(tmp_path / "d", {"detector": {"bundle": str(demo_bundle), "threads": 1,
                                                  "precision": other}})
    with daemon:
        url = f"http://127.0.0.1:{daemon.config['http']['port']}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                health = json.loads(reply.read())
        except urllib.error.HTTPError as not_ready:  # no PACS in this test: 503, same body
            health = json.loads(not_ready.read())
    assert health["checks"]["detector"]["detail"].startswith(f"efficientnet-lite0 {other} ")
    log = daemon.log()
    assert "torch: 1 intra-op threads" in log
    assert f"validated at {validated}, running at {other}" in log


class CountingDetector(Detector):
    """The fitted detector, recording how many images each score_images call scored."""

    def __init__(self, fitted: Detector) -> None:
        super().__init__(fitted.backbone, fitted.state, fitted.config, fitted.provenance)
        self.calls: list[int] = []

    def score_images(self, images):
        scores = super().score_images(images)
        self.calls.append(len(scores))
        return scores


def test_shared_scorer_batches_concurrent_studies(fitted, images) -> None:
    detector = CountingDetector(fitted)
    alone = [s.score for s in fitted.score_images(images)]
    scorer = SharedScorer(wait_s=2.0)
    results: dict[str, object] = {}

    def study(name: str, part: list[InputImage]) -> None:
        try:
            results[name] = scorer.score(detector, iter(part))
        except Exception as exc:  # noqa: BLE001 - checked below
            results[name] = exc

    def broken():
        yield images[0]
        raise pydicom.errors.InvalidDicomError("working copy is not DICOM")

    workers = [threading.Thread(target=study, args=("a", images[:2])),
               threading.Thread(target=study, args=("b", images[2:])),
               threading.Thread(target=study, args=("c", broken()))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    scorer.close()
    assert detector.calls == [5]  # three studies in one call: 2 + 2 + the broken one's first
    np.testing.assert_allclose([s.score for s in results["a"] + results["b"]], alone, atol=1e-5)
    assert isinstance(results["c"], pydicom.errors.InvalidDicomError)  # that study only
    with pytest.raises(ValueError, match="wait_s"):
        SharedScorer(wait_s=-1)


@pytest.mark.slow
def test_daemon_workers_share_the_scorer(tmp_path: Path, shared_dicom: Path,
                                         demo_bundle: Path) -> None:
    """Two workers, three studies sent at once: every study is scored through the shared
    scorer and gets its result (identical pixels, identical scores)."""
    files = []
    for n in range(3):
        ds = pydicom.dcmread(shared_dicom / "orthanc-Issue16.dcm")
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        files.append(tmp_path / f"study{n}.dcm")
        ds.save_as(files[-1])
    daemon = Daemon(tmp_path / "d", {"detector": {"bundle": str(demo_bundle)},
                                     "workers": {"count": 2, "batch_wait_s": 1.0}})
    with daemon:
        assert dcmsend(daemon.port, files).returncode == 0
        wait_for(lambda: daemon.query("select count(*) from results")[0][0] == 3, timeout=240,
                 interval=0.5, what="three results")
        rows = daemon.query("select score, images_scored from results")
    assert [r[1] for r in rows] == [1, 1, 1]
    assert max(r[0] for r in rows) - min(r[0] for r in rows) < 1e-6
