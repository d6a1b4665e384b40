"""The whole BiomedCLIP code path on a tiny model of the same family.

The fixture writes, in a temporary folder laid out like the hub repositories, an
``open_clip_config.json`` with BiomedCLIP's schema (timm ViT vision tower, Hugging Face BERT
text tower with the MLP projection and CLS pooler), random weights saved by open_clip, a BERT
``config.json`` and a WordPiece tokenizer built from a small vocabulary. The real loader,
text prompts, fit, scoring and bundle round trip then run on it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import open_clip
import pydicom
import pytest
import torch

from tests import util
from sonoshot.config import DetectorConfig
from sonoshot.model import (BackboneError, DetectorError, create_backbone, fit_detector,
                            load_detector, save_bundle)
from sonoshot.model.backbones import OpenClip, resolve_backbone_name
from sonoshot.model.hub import pull_biomedclip
from sonoshot.model.inputs import InputImage
from sonoshot.model.prompts import class_prompts

WORDS = sorted({w.strip(".,:").lower() for sentences in class_prompts().values()
                for s in sentences for w in s.split()})


def build_tiny_biomedclip(folder: Path) -> Path:
    """Write a tiny random BiomedCLIP-family model into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"],
             *"abcdefghijklmnopqrstuvwxyz-"]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 256}))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": len(dict.fromkeys(vocab)),
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 512, "type_vocab_size": 2}))
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                     "context_length": 256},
    }
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                           "std": [0.26862954, 0.26130258, 0.27577711]}}))
    torch.manual_seed(0)
    text_cfg = dict(model_cfg["text_cfg"], hf_model_name=str(folder), hf_model_pretrained=False)
    model = open_clip.create_model(f"local-dir:{folder}", text_cfg=text_cfg, load_weights=False)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_biomedclip(tmp_path_factory.mktemp("biomedclip"))


@pytest.fixture(scope="module")
def config(tiny: Path) -> DetectorConfig:
    return DetectorConfig(backbone="auto", biomedclip_path=str(tiny))


def _images(seed: int, n: int, bright: bool) -> list[InputImage]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        frame = rng.integers(0, 120, (80, 96), dtype=np.uint8)
        if bright:
            frame[20:50, 30:60] = 200
        out.append(InputImage(f"{seed}-{i}.png", f"{seed:02d}{i:062d}", (0,), (frame,)))
    return out


def test_auto_resolves_to_biomedclip_and_loads_weights(config: DetectorConfig, tiny: Path) -> None:
    assert resolve_backbone_name(config) == "biomedclip"
    backbone = create_backbone(config)
    assert isinstance(backbone, OpenClip) and backbone.has_text
    emb = backbone.embed_images([np.zeros((50, 70, 3), np.uint8)] * 2)
    assert emb.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    batch = torch.rand(2, 3, backbone.image_size, backbone.image_size)
    same, patches = backbone.embed_tensors_with_patches(batch)
    np.testing.assert_allclose(same, backbone.embed_tensors(batch), atol=1e-5)
    grid = (backbone.image_size // backbone.model.visual.trunk.patch_embed.patch_size[0]) ** 2
    assert patches is not None and patches.shape[:2] == (2, grid)
    np.testing.assert_allclose(np.linalg.norm(patches.astype(np.float32), axis=-1), 1.0,
                               rtol=2e-3)
    state = torch.load(tiny / "open_clip_pytorch_model.bin", weights_only=True)
    loaded = backbone.model.state_dict()
    assert all(torch.equal(state[k], loaded[k]) for k in state)


def test_text_tower_embeds_prompts(config: DetectorConfig) -> None:
    backbone = create_backbone(config)
    prompts = class_prompts(("breast",))
    text = backbone.embed_text(prompts["normal"][:3])
    assert text.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(text[0], text[1])


def test_missing_files_are_listed(tmp_path: Path, tiny: Path) -> None:
    (tmp_path / "open_clip_config.json").write_text((tiny / "open_clip_config.json").read_text())
    with pytest.raises(BackboneError, match="config.json.*open_clip_pytorch_model.bin.*vocab.txt"):
        create_backbone(DetectorConfig(backbone="biomedclip", biomedclip_path=str(tmp_path)))
    assert resolve_backbone_name(DetectorConfig(biomedclip_path=str(tmp_path))) == "efficientnet-lite0"


def test_zero_shot_fit_score_and_bundle_round_trip(config: DetectorConfig, tmp_path: Path) -> None:
    zero = load_detector(config)
    assert zero is not None and zero.state.mode == "zero-shot"
    ds = pydicom.dcmread(util.testdata("examples_ybr_color.dcm"))
    zero_scores = zero.score_dataset(ds)
    assert len(zero_scores) == 1 and 0.0 <= zero_scores[0].score <= 1.0
    assert zero_scores[0].frames == (0, 10, 19, 29)
    assert zero_scores[0].maps == ()  # no patch memory, no map

    backbone = create_backbone(config)
    detector = fit_detector(backbone, _images(1, 4, False), _images(2, 4, True), config, seed=3)
    assert detector.state.mode == "labelled" and detector.state.head is not None
    assert detector.state.bank is not None and detector.state.global_scale is not None
    assert detector.state.probe is not None and detector.state.probe.weight.shape == (192,)
    assert detector.provenance["prompts"]["abnormal"]
    digest = save_bundle(detector, tmp_path / "bundle")
    loaded = load_detector(dataclasses.replace(config, bundle=str(tmp_path / "bundle")))
    assert loaded is not None and loaded.bundle_sha256 == digest
    assert loaded.backbone_name == "biomedclip" and loaded.backbone_sha256 == backbone.sha256
    assert loaded.threshold == pytest.approx(detector.threshold)
    probe = _images(9, 3, True)
    np.testing.assert_allclose(loaded.score_frames([im.frames[0] for im in probe]),
                               detector.score_frames([im.frames[0] for im in probe]), rtol=1e-5)
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert len(meta["support"]) == 8 and meta["backbone"]["sha256"] == backbone.sha256
    (scored,) = loaded.score_dataset(ds)  # ViT patch tokens: a 14 x 14 grid per view
    assert [m.frame for m in scored.maps] == [0, 10, 19, 29]
    assert all(m.anomaly.shape == (240, 320) and m.threshold == loaded.map_threshold
               for m in scored.maps)

    normal_only = fit_detector(backbone, _images(1, 4, False), [], config, seed=3)
    state = normal_only.state
    assert state.mode == "normal-only" and state.head is None
    assert state.protos is not None and state.bank is not None  # text anchor + patch memory
    scores = normal_only.score_frames([im.frames[0] for im in probe])
    assert ((0.0 <= scores) & (scores <= 1.0)).all()

    with pytest.raises(DetectorError, match="fitted on backbone biomedclip"):
        load_detector(dataclasses.replace(config, bundle=str(tmp_path / "bundle"),
                                          backbone="efficientnet-lite0"))


def test_model_pull_from_hub_layout_cache(tmp_path: Path, tiny: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``model pull`` through huggingface_hub, offline, from a cache laid out like the hub."""
    cache = tmp_path / "hub"
    for repo, names in ((
            "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
            ["open_clip_config.json", "open_clip_pytorch_model.bin"]),
            ("microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
             ["config.json", "vocab.txt", "tokenizer_config.json"])):
        base = cache / f"models--{repo.replace('/', '--')}"
        snapshot = base / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True)
        (base / "refs").mkdir()
        (base / "refs" / "main").write_text("0" * 40)
        for name in names:
            (snapshot / name).write_bytes((tiny / name).read_bytes())
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    out = tmp_path / "pulled"
    written = pull_biomedclip(out)
    assert {p.name for p in written} == {"open_clip_config.json", "open_clip_pytorch_model.bin",
                                         "config.json", "vocab.txt", "tokenizer_config.json"}
    backbone = create_backbone(DetectorConfig(backbone="biomedclip", biomedclip_path=str(out)))
    assert backbone.sha256 == create_backbone(DetectorConfig(
        backbone="biomedclip", biomedclip_path=str(tiny))).sha256
