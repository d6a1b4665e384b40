"""k-shot protocol splits, the evaluation report, and the ``fit`` / ``eval`` commands end to end
on a few real BUSI images (linked from the shared folder into temporary folders)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sonoshot.cli import main
from sonoshot.model.detector import Embeddings
from sonoshot.model.evaluate import Example, draw_split, markdown_table, read_manifest, run_protocol
from sonoshot.model.head import N_VIEWS
from sonoshot.model.inputs import InputError
from sonoshot.model.localisation import EVAL_SIDE, centre_map, pixel_metrics, read_masks


@pytest.mark.parametrize("protocol", ["labelled", "normal-only"])
def test_support_and_query_never_share_a_group(busi: Path, protocol: str) -> None:
    examples = read_manifest(busi)
    for seed in range(5):
        support, query = draw_split(examples, 16, seed, protocol)
        labels = [examples[i].label for i in support]
        assert labels.count(0) == 16 and labels.count(1) == (16 if protocol == "labelled" else 0)
        assert not {examples[i].group for i in support} & {examples[i].group for i in query}
        assert len({examples[i].group for i in support}) == len(support)
    assert not np.array_equal(draw_split(examples, 4, 0, protocol)[0],
                              draw_split(examples, 4, 1, protocol)[0])


def test_run_protocol_rows_and_table() -> None:
    rng = np.random.default_rng(0)
    n = 40
    labels = np.arange(n) % 2
    centres = rng.normal(size=(2, 16))
    views = centres[labels][:, None] + 0.8 * rng.normal(size=(n, N_VIEWS, 16))
    views = (views / np.linalg.norm(views, axis=-1, keepdims=True)).astype(np.float32)
    patches = views[:, :, None, :] + 0.3 * rng.normal(size=(n, N_VIEWS, 3, 16))  # 3 per image
    patches /= np.linalg.norm(patches, axis=-1, keepdims=True)
    examples = [Example(f"{i}.png", int(labels[i]), str(i // 2)) for i in range(n)]
    rows, curves = run_protocol(Embeddings(views, patches.astype(np.float16)), examples, [2, 4],
                                2, "labelled", None)
    names = {r["method"] for r in rows}
    assert names == {"sonoshot", "sonoshot-no-projection", "sonoshot-no-augmentation",
                     "sonoshot-no-patches", "sonoshot-no-probe", "sonoshot-patches-only",
                     "baseline-prototype",
                     "baseline-knn", "baseline-logreg"}
    assert all(r["auroc_mean"] > 0.8 and r["seeds"] == 2 for r in rows)
    assert set(curves) == {(m, k) for m in names for k in (2, 4)}
    table = markdown_table(rows)
    assert "| sonoshot | AUROC |" in table and "k=4" in table
    rows, _ = run_protocol(Embeddings(views, patches.astype(np.float16)), examples, [2], 1,
                           "normal-only", None)
    assert {r["method"] for r in rows} == {"sonoshot", "baseline-prototype", "baseline-knn"}


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text("file,label,group\na.png,benign,1\n")
    with pytest.raises(InputError, match="line 2: label 'benign'"):
        read_manifest(tmp_path)


def _link(busi: Path, names: list[str], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        (folder / Path(name).name).symlink_to(busi / name)
    return folder


def test_eval_command_writes_report(busi: Path, tmp_path: Path) -> None:
    examples = read_manifest(busi)
    picked = [e for e in examples if e.label == 0][:6] + [e for e in examples if e.label == 1][:6]
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.csv").write_text("file,label,group\n" + "".join(
        f"{busi / e.file},{'abnormal' if e.label else 'normal'},{e.group}\n" for e in picked))
    (data / "masks").mkdir()
    for e in picked[6:]:
        name = f"{Path(e.file).stem}.png"
        (data / "masks" / name).symlink_to(busi / "masks" / name)
    report = tmp_path / "report"
    status = main(["eval", "--data", str(data), "--shots", "1,2", "--seeds", "2", "--protocol",
                   "both", "--backbone", "efficientnet-lite0", "--cache", str(tmp_path / "cache"),
                   "--report", str(report)])
    assert status == 0
    rows = json.loads((report / "report.json").read_text())
    assert {"method", "protocol", "shots", "seeds", "auroc_mean", "auroc_std", "f1_mean",
            "accuracy_mean"} <= rows[0].keys()
    assert {(r["protocol"], r["shots"]) for r in rows} == {
        (p, k) for p in ("labelled", "normal-only") for k in (1, 2)}
    assert (report / "roc-labelled-k2.png").stat().st_size > 1000
    assert (report / "roc-normal-only-k1.png").is_file()
    text = (report / "report.md").read_text()
    assert "| baseline-logreg | AUROC |" in text
    pixel = [r for r in rows if r["level"] == "pixel"]
    assert {(r["method"], r["protocol"], r["shots"]) for r in pixel} == {
        (m, p, k) for m in ("sonoshot", "patch-distance", "centre")
        for p in ("labelled", "normal-only") for k in (1, 2)}
    assert all(0 <= r["pixel_auroc_mean"] <= 1 and 0 <= r["peak_hit_mean"] <= 1 for r in pixel)
    assert "### labelled protocol, pixel level, 2 seeds" in text
    assert "| floor: centre | pixel AUROC |" in text and "| sonoshot | peak hit rate |" in text
    assert (report / "gallery-labelled-k2.png").stat().st_size > 10000
    assert (report / "gallery-normal-only-k2.png").is_file()
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1


def test_fit_command_and_its_errors(busi: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    examples = read_manifest(busi)
    normal = _link(busi, [e.file for e in examples if e.label == 0][:2], tmp_path / "n")
    abnormal = _link(busi, [e.file for e in examples if e.label == 1][:2], tmp_path / "a")
    out = tmp_path / "bundle"
    assert main(["fit", "--normal", str(normal), "--abnormal", str(abnormal), "--backbone",
                 "efficientnet-lite0", "--scope", "BodyPartExamined=BREAST,AXILLA",
                 "--scope", "Modality=US", "--out", str(out)]) == 0
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["mode"] == "labelled" and len(meta["support"]) == 4
    assert meta["scope"] == {"BodyPartExamined": ["BREAST", "AXILLA"], "Modality": ["US"]}
    assert "scope BodyPartExamined=BREAST,AXILLA; Modality=US" in capsys.readouterr().out
    assert main(["fit", "--normal", str(normal), "--scope", "BodyPart=BREAST", "--out",
                 str(tmp_path / "w")]) == 2
    assert "'BodyPart' is not a DICOM keyword" in capsys.readouterr().err

    assert main(["fit", "--normal", str(normal), "--backbone", "resnet", "--out",
                 str(tmp_path / "x")]) == 1
    assert "unknown backbone 'resnet'" in capsys.readouterr().err
    (abnormal / "notes.txt").write_text("not an image")
    assert main(["fit", "--normal", str(normal), "--abnormal", str(abnormal), "--out",
                 str(tmp_path / "y")]) == 1
    assert "notes.txt: not a decodable DICOM image" in capsys.readouterr().err
    config = tmp_path / "c.toml"
    config.write_text("[detector]\nmin_shots = 3\nbackbone = \"efficientnet-lite0\"\n")
    (abnormal / "notes.txt").unlink()
    assert main(["--config", str(config), "fit", "--normal", str(normal), "--abnormal",
                 str(abnormal), "--out", str(tmp_path / "z")]) == 1
    assert "too few examples: 2 normal and 2 abnormal" in capsys.readouterr().err


def test_pixel_metrics_and_the_centre_floor(busi: Path) -> None:
    examples = read_manifest(busi)
    files = [e.file for e in examples if e.label == 1][:3] + [e.file for e in examples
                                                              if e.label == 0][:1]
    masks = read_masks(busi, files)
    assert sorted(masks) == [0, 1, 2]
    assert masks[0].grid.shape == (EVAL_SIDE, EVAL_SIDE) and masks[0].full.shape == (512, 512)
    truth = [masks.get(i) for i in range(4)]
    perfect = [m.grid.astype(np.float32) for m in truth[:3]] + [np.zeros((128, 128), np.float32)]
    assert pixel_metrics(perfect, truth) == (1.0, 1.0)
    inverted = [1 - m for m in perfect[:3]] + [np.ones((128, 128), np.float32)]
    auroc, hit = pixel_metrics(inverted, truth)
    assert auroc < 0.1 and hit == 0.0
    centre = centre_map((128, 128))
    assert np.unravel_index(centre.argmax(), centre.shape) in {(63, 63), (63, 64), (64, 63),
                                                                (64, 64)}
    assert 0.5 < pixel_metrics([centre] * 4, truth)[0] < 1.0
    with pytest.raises(ValueError, match="no query image has a lesion"):
        pixel_metrics([centre], [None])
    assert read_masks(busi / "images", files) == {}
