"""detector.py
===========

Fit, score and bundle the few-shot detector.

:func:`fit_state` is the pure core on embeddings (used by :mod:`~sonoshot.model.evaluate`
with cached embeddings); :func:`fit_detector` wraps it with a backbone and file provenance;
:class:`Detector` scores DICOM datasets; :func:`save_bundle` / :func:`load_bundle` round-trip
a bundle folder (``bundle.json`` + ``head.pt``) and loading refuses a backbone whose weights
differ from the ones the bundle was fitted on.

Modes: ``labelled`` (normal and abnormal examples: projection head + prototypes),
``normal-only`` (normal examples; abnormal anchor from text when there is a text tower,
otherwise distance to the nearest normal example), ``zero-shot`` (text anchors only).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydicom.dataset import Dataset

from sonoshot import __version__
from sonoshot.config import DetectorConfig
from sonoshot.model.backbones import Backbone, create_backbone, prepare_image
from sonoshot.model.head import (FLIP_VIEWS, TTA_VIEWS, HeadConfig, ProjectionHead,
                                 abnormal_probability, augment_views, prototypes,
                                 support_embedding, train_head, tta_embedding)
from sonoshot.model.inputs import InputImage, dataset_frames
from sonoshot.model.prompts import class_prompts, ensemble

FORMAT_VERSION = 1
DETECTOR_NAME = "sonoshot-fewshot"
Mode = Literal["labelled", "normal-only", "zero-shot"]


class DetectorError(ValueError):
    """A detector cannot be fitted or loaded (too few examples, bad bundle, wrong backbone)."""


@dataclass(frozen=True)
class ImageScore:
    """The abnormality score of one instance: the maximum over its sampled frames."""

    sop_instance_uid: str
    frames: tuple[int, ...]  # zero-based frame numbers that were scored
    score: float  # probability of abnormal, in [0, 1]


@dataclass
class HeadState:
    """Everything scoring needs besides the backbone: head, prototypes, threshold."""

    mode: Mode
    dim: int
    head: ProjectionHead | None
    protos: np.ndarray  # (2, D) in head space; normal-only without text: (n_normal, D) examples
    temperature: float
    threshold: float
    nearest: bool = False  # normal-only without text: protos are the normal examples
    scale: tuple[float, float] = (0.0, 1.0)  # nearest-normal distance -> logistic (centre, width)
    metrics: dict[str, float] = field(default_factory=dict)

    def project(self, emb: np.ndarray) -> torch.Tensor:
        z = torch.as_tensor(emb, dtype=torch.float32)
        if self.head is None:
            return z
        with torch.no_grad():
            return self.head(z)

    def score(self, emb: np.ndarray) -> np.ndarray:
        """Probability of abnormal for ``(N, D)`` scoring embeddings."""
        z = self.project(emb)
        protos = torch.as_tensor(self.protos)
        if self.nearest:
            distance = 1.0 - (z @ protos.T).max(dim=1).values.numpy()
            return 1.0 / (1.0 + np.exp(-(distance - self.scale[0]) / self.scale[1]))
        with torch.no_grad():
            return abnormal_probability(z, protos, self.temperature).numpy()


def text_anchors(backbone: Backbone, organs: Sequence[str] = ()) -> np.ndarray:
    """``(2, D)`` prompt-ensembled anchors (normal, abnormal) from the backbone's text tower."""
    prompts = class_prompts(organs)
    return np.stack([ensemble(backbone.embed_text(prompts[c])) for c in ("normal", "abnormal")])


def _youden_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity; midpoints between sorted scores."""
    order = np.unique(scores)
    candidates = (order[:-1] + order[1:]) / 2 if len(order) > 1 else order
    best, best_j = 0.5, -np.inf
    for t in candidates:
        pred = scores > t
        j = pred[labels == 1].mean() + (~pred[labels == 0]).mean()
        if j > best_j:
            best, best_j = float(t), j
    return best


def fit_state(views: np.ndarray, labels: np.ndarray, text: np.ndarray | None, seed: int,
              head_config: HeadConfig = HeadConfig(), project: bool = True,
              augment: bool = True) -> HeadState:
    """Fit the scoring state on support embeddings.

    Parameters
    ----------
    views : numpy.ndarray
        ``(N, N_VIEWS, D)`` embeddings of the support images under :func:`augment_views`.
    labels : numpy.ndarray
        ``(N,)`` 0 normal / 1 abnormal. Only zeros gives the normal-only mode; N = 0 with
        ``text`` gives the zero-shot mode.
    text : numpy.ndarray or None
        ``(2, D)`` text anchors, or None without a text tower (or for the no-text ablation).
    seed : int
    head_config : HeadConfig
    project, augment : bool
        Ablation switches: train the projection head; use augmentation views.

    Returns
    -------
    HeadState
        Support prototypes average all augmentation views of each example (only the
        identity and flip views without ``augment``). The threshold is chosen by
        leave-one-out on the support set (head fixed, the left-out
        example removed from its prototype), maximising Youden's J; the normal-only mode
        without text takes the largest leave-one-out normal score.

    Raises
    ------
    DetectorError
        If there is no normal example (and no text), or abnormal examples but no normal one.
    """
    labels = np.asarray(labels, dtype=np.int64)
    has_abnormal, has_normal = bool((labels == 1).any()), bool((labels == 0).any())
    if has_abnormal and not has_normal:
        raise DetectorError("abnormal examples were given but no normal example")
    if not has_normal and text is None:
        raise DetectorError("no normal example and no text tower: nothing to anchor a detector")
    dim = views.shape[-1] if len(views) else text.shape[-1]  # type: ignore[union-attr]
    def pool(v: np.ndarray) -> np.ndarray:
        return support_embedding(v) if augment else tta_embedding(v, FLIP_VIEWS)

    emb = pool(views) if len(views) else np.zeros((0, dim), np.float32)
    head, metrics = None, {}
    if has_abnormal and project:
        head, metrics = train_head(views, labels, text, head_config, seed, augment)
    mode: Mode = "labelled" if has_abnormal else ("normal-only" if has_normal else "zero-shot")
    state = HeadState(mode, dim, head, np.zeros((2, dim), np.float32), head_config.temperature,
                      0.5, metrics=metrics)
    z = state.project(emb)
    text_z = None if text is None else state.project(text)
    if mode == "normal-only" and text_z is None:
        sims = (z @ z.T).numpy()
        np.fill_diagonal(sims, -np.inf)
        loo = 1.0 - sims.max(axis=1) if len(z) > 1 else np.array([0.0])
        width = float(max(loo.std(), 0.02))
        state.nearest, state.protos = True, z.numpy()
        state.scale = (float(loo.mean()), width)
        state.threshold = float(1 / (1 + np.exp(-(loo.max() - loo.mean()) / width)))
        return state
    labels_t = torch.as_tensor(labels)
    state.protos = prototypes(z, labels_t, text_z, head_config.text_weight).numpy()
    if mode == "labelled":
        loo = np.empty(len(z))
        for i in range(len(z)):
            keep = torch.arange(len(z)) != i
            if (labels_t[keep] == labels_t[i]).any() or text_z is not None:
                p = prototypes(z[keep], labels_t[keep], text_z, head_config.text_weight)
            else:
                p = torch.as_tensor(state.protos)
            loo[i] = float(abnormal_probability(z[i:i + 1], p, state.temperature))
        state.threshold = _youden_threshold(loo, labels)
        metrics["loo_accuracy"] = float(((loo > state.threshold) == labels).mean())
    return state


def embed_views(backbone: Backbone, frames: Sequence[np.ndarray], mask: bool = True,
                n_views: int | None = None) -> np.ndarray:
    """``(N, V, D)`` embeddings of frames under the augmentation views (first ``n_views``)."""
    out = []
    for start in range(0, len(frames), 16):
        batch = torch.stack([prepare_image(f, backbone.image_size, mask)
                             for f in frames[start:start + 16]])
        views = augment_views(batch)[:n_views]
        out.append(np.stack([backbone.embed_tensors(v) for v in views], axis=1))
    return np.concatenate(out)


class Detector:
    """A fitted (or zero-shot) detector bound to its backbone and provenance."""

    name = DETECTOR_NAME
    version = __version__

    def __init__(self, backbone: Backbone, state: HeadState, config: DetectorConfig,
                 provenance: dict | None = None) -> None:
        self.backbone = backbone
        self.state = state
        self.config = config
        self.provenance = provenance or {}
        self.bundle_sha256 = self.provenance.get("bundle_sha256", "")

    @property
    def backbone_name(self) -> str:
        return self.backbone.name

    @property
    def backbone_sha256(self) -> str:
        return self.backbone.sha256

    @property
    def threshold(self) -> float:
        """The study verdict threshold: ``config.threshold`` when set, else the fitted one."""
        return self.config.threshold if self.config.threshold >= 0 else self.state.threshold

    def score_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Probability of abnormal per frame (TTA: mean embedding over :data:`TTA_VIEWS`)."""
        views = embed_views(self.backbone, frames, self.config.mask_annotations,
                            n_views=max(TTA_VIEWS) + 1)
        return self.state.score(tta_embedding(views))

    def score_image(self, image: InputImage) -> ImageScore:
        """Score one instance or image file: the maximum over its frames."""
        scores = self.score_frames(image.frames)
        return ImageScore(image.name, image.frame_indices, float(scores.max()))

    def score_dataset(self, ds: Dataset) -> list[ImageScore]:
        """Score a DICOM instance (a one-element list: one score per instance).

        Raises
        ------
        sonoshot.dicom_io.pixels.UndecodableError
            If its pixel data cannot be decoded.
        """
        return [self.score_image(dataset_frames(ds, self.config.frames_per_cine))]

    def study_score(self, scores: Sequence[ImageScore]) -> float:
        """Aggregate image scores per ``config.study_aggregation`` (max, top3-mean, mean).

        Raises
        ------
        ValueError
            If ``scores`` is empty.
        """
        values = np.sort([s.score for s in scores])[::-1]
        if len(values) == 0:
            raise ValueError('Argument "scores" must not be empty.')
        agg = self.config.study_aggregation
        return float(values[0] if agg == "max" else values[:3].mean() if agg == "top3-mean"
                     else values.mean())


def fit_detector(backbone: Backbone, normal: Sequence[InputImage], abnormal: Sequence[InputImage],
                 config: DetectorConfig, seed: int = 0,
                 head_config: HeadConfig = HeadConfig()) -> Detector:
    """Fit a detector from example images (every frame of each counts as one example).

    Raises
    ------
    DetectorError
        With fewer than ``config.min_shots`` normal examples, or abnormal examples below
        ``config.min_shots`` when any are given.
    """
    if len(normal) < config.min_shots or 0 < len(abnormal) < config.min_shots:
        raise DetectorError(f"too few examples: {len(normal)} normal and {len(abnormal)} "
                            f"abnormal; at least {config.min_shots} per given class are needed")
    frames = [f for im in (*normal, *abnormal) for f in im.frames]
    labels = np.array([0] * sum(len(im.frames) for im in normal)
                      + [1] * sum(len(im.frames) for im in abnormal))
    text = text_anchors(backbone, config.prompt_organs) if backbone.has_text else None
    state = fit_state(embed_views(backbone, frames, config.mask_annotations), labels, text, seed,
                      head_config)
    provenance = {
        "seed": seed,
        "head_config": dataclasses.asdict(head_config),
        "support": [{"file": im.name, "sha256": im.sha256, "label": lab}
                    for lab, ims in (("normal", normal), ("abnormal", abnormal)) for im in ims],
        "prompts": class_prompts(config.prompt_organs) if text is not None else {},
    }
    return Detector(backbone, state, config, provenance)


def zero_shot_detector(backbone: Backbone, config: DetectorConfig) -> Detector:
    """A detector from the text anchors alone.

    Raises
    ------
    sonoshot.model.backbones.BackboneError
        If the backbone has no text tower.
    """
    text = text_anchors(backbone, config.prompt_organs)
    state = fit_state(np.zeros((0, 1, text.shape[1]), np.float32), np.zeros(0), text, 0)
    return Detector(backbone, state, config, {"prompts": class_prompts(config.prompt_organs)})


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in ("bundle.json", "head.pt"):
        digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return digest.hexdigest()


def save_bundle(detector: Detector, folder: Path) -> str:
    """Write ``bundle.json`` and ``head.pt`` into ``folder``; returns the bundle SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    state = detector.state
    meta = {
        "format_version": FORMAT_VERSION,
        "name": DETECTOR_NAME,
        "version": __version__,
        "backbone": {"name": detector.backbone_name, "sha256": detector.backbone_sha256},
        "mode": state.mode,
        "dim": state.dim,
        "temperature": state.temperature,
        "threshold": state.threshold,
        "nearest": state.nearest,
        "scale": list(state.scale),
        "metrics": state.metrics,
        **{k: v for k, v in detector.provenance.items() if k != "bundle_sha256"},
    }
    (folder / "bundle.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    tensors = {"protos": torch.as_tensor(state.protos)}
    if state.head is not None:
        tensors.update({f"head.{k}": v for k, v in state.head.state_dict().items()})
    torch.save(tensors, folder / "head.pt")
    detector.bundle_sha256 = detector.provenance["bundle_sha256"] = _digest(folder)
    return detector.bundle_sha256


def load_bundle(folder: Path, backbone: Backbone, config: DetectorConfig) -> Detector:
    """Load a bundle and bind it to ``backbone``.

    Raises
    ------
    DetectorError
        If files are missing, the format version is unsupported, or the backbone's name or
        weights SHA-256 differ from the bundle's.
    """
    try:
        meta = json.loads((folder / "bundle.json").read_text())
        tensors = torch.load(folder / "head.pt", weights_only=True)
    except (OSError, ValueError) as exc:
        raise DetectorError(f"{folder}: not a detector bundle ({exc})") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise DetectorError(f"{folder}: bundle format {meta.get('format_version')!r}, "
                            f"this sonoshot reads {FORMAT_VERSION}")
    want = meta["backbone"]
    if (want["name"], want["sha256"]) != (backbone.name, backbone.sha256):
        raise DetectorError(
            f"{folder}: fitted on backbone {want['name']} (weights sha256 {want['sha256'][:12]}), "
            f"but {backbone.name} (sha256 {backbone.sha256[:12]}) is loaded")
    head = None
    head_weights = {k[5:]: v for k, v in tensors.items() if k.startswith("head.")}
    if head_weights:
        head = ProjectionHead(meta["dim"], head_weights["down.weight"].shape[0])
        head.load_state_dict(head_weights)
        head.eval()
    state = HeadState(meta["mode"], meta["dim"], head, tensors["protos"].numpy(),
                      meta["temperature"], meta["threshold"], meta["nearest"],
                      tuple(meta["scale"]), meta["metrics"])
    provenance = {k: meta[k] for k in ("seed", "head_config", "support", "prompts") if k in meta}
    provenance["bundle_sha256"] = _digest(folder)
    return Detector(backbone, state, config, provenance)


def load_detector(config: DetectorConfig) -> Detector | None:
    """The daemon's detector: the bundle in ``config.bundle``; else zero-shot from the prompts
    when the backbone has a text tower; else None (studies wait for a detector).

    Raises
    ------
    DetectorError
        If the bundle cannot be loaded or does not match the backbone.
    sonoshot.model.backbones.BackboneError
        If the configured backbone is unknown or its files are missing.
    """
    if config.bundle:
        folder = Path(config.bundle)
        try:
            name = json.loads((folder / "bundle.json").read_text())["backbone"]["name"]
        except (OSError, ValueError, KeyError) as exc:
            raise DetectorError(f"{folder}: not a detector bundle ({exc})") from exc
        if config.backbone not in ("auto", name):
            raise DetectorError(f"{folder}: fitted on backbone {name}, but detector.backbone is "
                                f"{config.backbone}")
        return load_bundle(folder, create_backbone(dataclasses.replace(config, backbone=name)),
                           config)
    backbone = create_backbone(config)
    return zero_shot_detector(backbone, config) if backbone.has_text else None
