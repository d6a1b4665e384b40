"""detector.py
===========

Fit, score and bundle the few-shot detector.

:func:`fit_state` is the pure core on embeddings (used by :mod:`~sonoshot.model.evaluate`
with cached embeddings); :func:`fit_detector` wraps it with a backbone and file provenance;
:class:`Detector` scores DICOM datasets; :func:`save_bundle` / :func:`load_bundle` round-trip
a bundle folder (``bundle.json`` + ``head.pt``) and loading refuses a backbone whose weights
differ from the ones the bundle was fitted on.

Modes: ``labelled`` (normal and abnormal examples: projection head + prototypes, the patch
memory of the normal examples and the lesion probe), ``normal-only`` (normal examples: the patch memory, and
the abnormal text anchor against the normal prototype when there is a text tower),
``zero-shot`` (text anchors only).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydicom.dataset import Dataset

from sonoshot import __version__
from sonoshot.config import DetectorConfig
from sonoshot.model.backbones import Backbone, create_backbone
from sonoshot.model.head import (FLIP_VIEWS, TTA_VIEWS, HeadConfig, ProjectionHead, prototypes,
                                 support_embedding, train_head, tta_embedding, view_geometry)
from sonoshot.model.inputs import InputImage, dataset_frames
from sonoshot.model.maps import FrameMap, place, unview
from sonoshot.model.patches import PatchBank, image_anomaly
from sonoshot.model.probe import LesionProbe
from sonoshot.model.pipeline import embed_frames
from sonoshot.model.prompts import class_prompts, ensemble
from sonoshot.model.runtime import native_bf16
from sonoshot.validation.imaging import image_stats
from sonoshot.model.scope import Scope, ScopeDecision, check_scope, validate_scope

FORMAT_VERSION = 2
DETECTOR_NAME = "sonoshot-fewshot"
DEMO_BUNDLE = "demo"  # detector.bundle value that names the packaged demo bundle
Mode = Literal["labelled", "normal-only", "zero-shot"]
log = logging.getLogger(__name__)


class DetectorError(ValueError):
    """A detector cannot be fitted or loaded (too few examples, bad bundle, wrong backbone)."""


@dataclass(frozen=True)
class ImageScore:
    """The abnormality score of one instance: the maximum over its sampled frames."""

    sop_instance_uid: str
    frames: tuple[int, ...]  # zero-based frame numbers that were scored
    score: float  # abnormality score in [0, 1] (see HeadState)
    maps: tuple[FrameMap, ...] = ()  # one per scored frame; empty without a patch memory


@dataclass(frozen=True)
class Embeddings:
    """Backbone outputs of N images under the augmentation views."""

    views: np.ndarray  # (N, V, D) global embeddings, L2-normalised
    patches: np.ndarray | None  # (N, V, P, C) patch features, L2-normalised; None without any

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: np.ndarray | slice) -> Embeddings:
        return Embeddings(self.views[index],
                          None if self.patches is None else self.patches[index])


@dataclass
class HeadState:
    """Everything scoring needs besides the backbone.

    An image's evidence is the sum of up to three terms, each standardised by the mean and
    standard deviation of its values on the support set (leave-one-out for the first two):
    the global term (the cosine-logit difference between the abnormal and the normal
    prototype), the patch term (:meth:`PatchBank.anomaly`) and the lesion-probe term (the
    same top-patch mean of :meth:`LesionProbe.logits`). The score is the logistic of the
    evidence. The anomaly map of an image is the standardised patch distance plus the probe's
    standardised logit, per patch.
    """

    mode: Mode
    dim: int
    head: ProjectionHead | None
    protos: np.ndarray | None  # (2, D) in head space; None when the global term is off
    temperature: float
    threshold: float
    bank: PatchBank | None = None
    global_scale: tuple[float, float] | None = None  # (mean, std); None: raw logit
    patch_scale: tuple[float, float] = (0.0, 1.0)
    views: tuple[int, ...] = TTA_VIEWS  # augmentation views averaged at scoring time
    metrics: dict[str, float] = field(default_factory=dict)
    # The support's leave-one-out scores and labels (the drift reference, sonoshot.validation)
    # and, from fit_detector, the image statistics of its frames.
    validation: dict[str, list] = field(default_factory=dict)
    map_threshold: float | None = None  # anomaly-map value of an anomalous pixel; None: none
    probe: LesionProbe | None = None  # labelled mode with a patch memory
    probe_scale: tuple[float, float] = (0.0, 1.0)  # (mean, std) of the probe term

    def project(self, emb: np.ndarray) -> torch.Tensor:
        z = torch.as_tensor(emb, dtype=torch.float32)
        if self.head is None:
            return z
        with torch.no_grad():
            return self.head(z)

    def global_logit(self, z: torch.Tensor, protos: np.ndarray | torch.Tensor) -> np.ndarray:
        """Cosine-logit difference (abnormal minus normal) of projected embeddings."""
        sims = z @ torch.as_tensor(protos).T
        return ((sims[:, 1] - sims[:, 0]) / self.temperature).numpy()

    def global_evidence(self, emb: Embeddings) -> np.ndarray:
        """The standardised global term of each image (zeros without the term)."""
        if self.protos is None:
            return np.zeros(len(emb))
        logit = self.global_logit(self.project(tta_embedding(emb.views, self.views)), self.protos)
        return logit if self.global_scale is None else _standardise(logit, self.global_scale)

    def evidence_maps(self, emb: Embeddings) -> tuple[np.ndarray, np.ndarray | None]:
        """Standardised evidence of abnormality per image ``(N,)``, and the anomaly map per
        patch ``(N, V, P)`` under the scoring views (None without the patch memory): each
        patch's nearest-normal distance standardised like the patch term, plus the lesion
        probe's standardised logit where there is a probe."""
        total = self.global_evidence(emb)
        if self.bank is None or emb.patches is None:
            return total, None
        distances = self.bank.distances(emb.patches, self.views)
        maps = _standardise(distances, self.patch_scale)
        total = total + _standardise(image_anomaly(distances), self.patch_scale)
        if self.probe is not None:
            logits = self.probe.logits(emb.patches[:, list(self.views)])
            maps = maps + logits
            total = total + _standardise(image_anomaly(logits), self.probe_scale)
        return total, maps

    def evidence(self, emb: Embeddings) -> np.ndarray:
        """Standardised evidence of abnormality for each image."""
        return self.evidence_maps(emb)[0]

    def score(self, emb: Embeddings) -> np.ndarray:
        """Abnormality score in [0, 1] (the logistic of :meth:`evidence`) for each image."""
        return _logistic(self.evidence(emb))


def _logistic(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return float(np.log(p / (1 - p)))


def _standardise(x: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    return (x - scale[0]) / scale[1]


def _scale(values: np.ndarray) -> tuple[float, float]:
    """Mean and spread of a term's leave-one-out values. One value (a single normal example)
    has no spread: its own magnitude stands in; identical values get 5 % of the mean, so a
    term can neither blow up nor saturate every score into a tie."""
    mean = float(values.mean())
    if len(values) < 2:
        return mean, max(abs(mean), 1e-6)
    return mean, float(max(values.std(), 0.05 * abs(mean), 1e-6))


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


def _loo_global(state: HeadState, z: torch.Tensor, labels: np.ndarray,
                text_z: torch.Tensor | None, text_weight: float) -> np.ndarray:
    """Global logit of each support example against prototypes without it (head fixed; a
    class's lone example keeps the full prototypes)."""
    labels_t = torch.as_tensor(labels)
    out = np.empty(len(z))
    for i in range(len(z)):
        keep = torch.arange(len(z)) != i
        if (labels_t[keep] == labels_t[i]).any() or text_z is not None:
            protos = prototypes(z[keep], labels_t[keep], text_z, text_weight)
        else:
            protos = torch.as_tensor(state.protos)
        out[i] = state.global_logit(z[i:i + 1], protos)[0]
    return out


def fit_state(support: Embeddings, labels: np.ndarray, text: np.ndarray | None, seed: int,
              head_config: HeadConfig = HeadConfig(), project: bool = True,
              augment: bool = True, use_global: bool = True, use_patches: bool = True,
              use_probe: bool = True) -> HeadState:
    """Fit the scoring state on support embeddings.

    Parameters
    ----------
    support : Embeddings
        The support images under :func:`augment_views` (views ``(N, N_VIEWS, D)``).
    labels : numpy.ndarray
        ``(N,)`` 0 normal / 1 abnormal. Only zeros gives the normal-only mode; N = 0 with
        ``text`` gives the zero-shot mode.
    text : numpy.ndarray or None
        ``(2, D)`` text anchors, or None without a text tower (or for the no-text ablation).
    seed : int
    head_config : HeadConfig
    project, augment, use_global, use_patches, use_probe : bool
        Ablation switches: train the projection head; use augmentation views; use the global
        prototype term; use the patch memory; use the lesion probe (labelled, with patches).

    Returns
    -------
    HeadState
        Support prototypes average all augmentation views of each example (only the identity
        and flip views without ``augment``). The global term needs both prototypes (abnormal
        examples or a text anchor); the patch term needs normal examples and patch features.
        The global and patch terms are standardised by their leave-one-out values on the
        support set, the probe term by its values on the support set it was fitted on. The
        threshold maximises Youden's J on those support scores in the labelled mode, is the
        largest leave-one-out score in the normal-only mode, and 0.5 zero-shot. The map
        threshold is the largest value any normal example's map reaches under leave-one-out
        (:func:`_map_threshold`).

    Raises
    ------
    DetectorError
        If there is no normal example (and no text), abnormal examples but no normal one, or
        normal examples only with neither a text tower nor patch features.
    """
    labels = np.asarray(labels, dtype=np.int64)
    has_abnormal, has_normal = bool((labels == 1).any()), bool((labels == 0).any())
    if has_abnormal and not has_normal:
        raise DetectorError("abnormal examples were given but no normal example")
    if not has_normal and text is None:
        raise DetectorError("no normal example and no text tower: nothing to anchor a detector")
    mode: Mode = "labelled" if has_abnormal else ("normal-only" if has_normal else "zero-shot")
    use_patches = use_patches and has_normal and support.patches is not None
    use_global = (use_global or not use_patches) and (has_abnormal or text is not None)
    if not (use_global or use_patches):
        raise DetectorError("normal examples only, but the backbone has neither a text tower "
                            "nor patch features")
    views = TTA_VIEWS if augment else FLIP_VIEWS
    dim = support.views.shape[-1] if len(support) else text.shape[-1]  # type: ignore[union-attr]
    head, metrics = None, {}
    if has_abnormal and project and use_global:
        head, metrics = train_head(support.views, labels, text, head_config, seed, augment)
    state = HeadState(mode, dim, head, None, head_config.temperature, 0.5, views=views,
                      metrics=metrics)
    loo = np.zeros(len(support))
    if use_global:
        pooled = support_embedding(support.views) if augment else tta_embedding(
            support.views, FLIP_VIEWS)
        z = state.project(pooled if len(support) else np.zeros((0, dim), np.float32))
        text_z = None if text is None else state.project(text)
        state.protos = prototypes(z, torch.as_tensor(labels), text_z,
                                  head_config.text_weight).numpy()
        if mode != "zero-shot":
            values = _loo_global(state, z, labels, text_z, head_config.text_weight)
            state.global_scale = _scale(values)
            loo += _standardise(values, state.global_scale)
    if use_patches:
        normal = np.flatnonzero(labels == 0)
        patches = support.patches  # type: ignore[assignment]
        state.bank = PatchBank.build(patches[normal][:, list(views)], seed=seed)
        owner = [int(np.searchsorted(normal, i)) if labels[i] == 0 else None
                 for i in range(len(labels))]
        distances = state.bank.loo_distances(patches, owner, views)
        values = image_anomaly(distances)
        state.patch_scale = _scale(values)
        loo += _standardise(values, state.patch_scale)
        maps = _standardise(distances, state.patch_scale)
        if use_probe and has_abnormal:
            state.probe = LesionProbe.fit(patches[:, list(views)], labels, distances, seed)
            logits = state.probe.logits(patches[:, list(views)])
            maps = maps + logits
            values = image_anomaly(logits)
            state.probe_scale = _scale(values)
            loo += _standardise(values, state.probe_scale)
        state.map_threshold = _map_threshold(maps[normal])
    if mode != "zero-shot":
        state.validation = {"scores": _logistic(loo).tolist(), "labels": labels.tolist()}
    if mode == "labelled":
        state.threshold = float(_logistic(np.array([_youden_threshold(loo, labels)]))[0])
        metrics["loo_accuracy"] = float(((_logistic(loo) > state.threshold) == labels).mean())
    elif mode == "normal-only":
        state.threshold = float(_logistic(loo).max())
    return state


def _map_threshold(normal_maps: np.ndarray) -> float:
    """The map value above which a pixel counts as anomalous: the largest that any normal
    example's map can reach, from its ``(N, V, P)`` leave-one-out patch maps. A pixel of the
    view-averaged map is at most the mean over views of each view's maximum, so no normal
    example has a pixel above this (its probe logits are in-sample)."""
    return float(normal_maps.max(axis=2).mean(axis=1).max())


def embed_views(backbone: Backbone, frames: Iterable[np.ndarray], mask: bool = True,
                n_views: int | None = None) -> Embeddings:
    """Embeddings of frames under the augmentation views (the first ``n_views``)."""
    return Embeddings(*embed_frames(backbone, frames, mask, n_views))


def _shapes_only(image: InputImage) -> InputImage:
    """``image`` with zero-strided stand-ins of its frames (their shapes, no pixels): what the
    maps need after the forward, so a long batch does not keep every decoded frame."""
    return dataclasses.replace(image, frames=tuple(np.broadcast_to(np.uint8(0), f.shape)
                                                   for f in image.frames))


class Detector:
    """A fitted (or zero-shot) detector bound to its backbone and provenance.

    Raises
    ------
    sonoshot.model.scope.ScopeError
        If ``scope`` names no DICOM text attribute or has an empty value.
    """

    name = DETECTOR_NAME
    version = __version__

    def __init__(self, backbone: Backbone, state: HeadState, config: DetectorConfig,
                 provenance: dict | None = None, scope: Scope | None = None,
                 description: str = "") -> None:
        self.backbone = backbone
        self.state = state
        self.config = config
        self.provenance = provenance or {}
        self.bundle_sha256 = self.provenance.get("bundle_sha256", "")
        self.scope: Scope = validate_scope(scope or {})  # keyword -> allowed values; {}: any
        self.description = description  # shown with results, e.g. the demo bundle's caveat

    def scope_decision(self, header: Dataset) -> ScopeDecision:
        """Whether an instance lies inside :attr:`scope`, and on what basis
        (:func:`sonoshot.model.scope.check_scope`)."""
        return check_scope(self.scope, header)

    def scope_problem(self, header: Dataset) -> str | None:
        """None when ``header`` is inside :attr:`scope`, else a short PHI-free reason."""
        return self.scope_decision(header).problem

    @property
    def backbone_name(self) -> str:
        return self.backbone.name

    @property
    def backbone_sha256(self) -> str:
        return self.backbone.sha256

    @property
    def precision(self) -> str:
        """The precision the backbone runs at (fp32, bf16 or fp16)."""
        return self.backbone.precision

    @property
    def threshold(self) -> float:
        """The study verdict threshold: ``config.threshold`` when set, else the fitted one."""
        return self.config.threshold if self.config.threshold >= 0 else self.state.threshold

    @property
    def map_threshold(self) -> float:
        """The anomaly-map value above which a pixel counts as anomalous: the most any normal
        example's map reached at fit time (leave-one-out), so a region is tissue more unusual
        than every normal example showed. Bundles from before maps: the evidence at their
        image threshold."""
        if self.state.map_threshold is None:
            return _logit(self.state.threshold)
        return self.state.map_threshold

    def analyse_frames(self, frames: Sequence[np.ndarray]
                       ) -> tuple[np.ndarray, np.ndarray | None]:
        """Abnormality score per frame (test-time augmentation over the state's views) and
        the per-view patch maps ``(N, V, P)`` (None without a patch memory)."""
        emb = embed_views(self.backbone, frames, self.config.mask_annotations,
                          n_views=max(self.state.views) + 1)
        evidence, maps = self.state.evidence_maps(emb)
        return _logistic(evidence), maps

    def score_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Abnormality score per frame (test-time augmentation over the state's views)."""
        return self.analyse_frames(frames)[0]

    def frame_maps(self, image: InputImage, scores: np.ndarray, maps: np.ndarray
                   ) -> tuple[FrameMap, ...]:
        """Each frame's patch maps ``(V, P)`` as a :class:`FrameMap` on the instance's grid."""
        geometry = view_geometry(self.backbone.image_size)
        views = [geometry[v] for v in self.state.views]
        cells = int(round(maps.shape[-1] ** 0.5))
        return tuple(
            FrameMap(index, float(score), place(unview(grids.reshape(len(views), cells, cells),
                                                       views, frame.shape[:2]),
                                                image.grid_shape, image.origin),
                     self.map_threshold)
            for index, frame, score, grids in zip(image.frame_indices, image.frames, scores, maps))

    def score_image(self, image: InputImage) -> ImageScore:
        """Score one instance or image file: the maximum over its frames, with a map per frame
        when the detector has a patch memory."""
        return self.score_images([image])[0]

    def score_images(self, images: Iterable[InputImage]) -> list[ImageScore]:
        """Score many instances or image files, of one study or of several, in order (each:
        the maximum over its frames, with a map per frame when there is a patch memory).

        Their frames share the backbone's micro-batches, so a batch is full however few
        frames each image has; a lazy iterable (decoding as it goes) is read as the batches
        need it, beside the forward where the cores allow (:mod:`~sonoshot.model.pipeline`).
        The scores are those of :meth:`score_image` one at a time, within float tolerance.

        Raises
        ------
        ValueError
            If an image has no frames.
        """
        seen: list[InputImage] = []

        def frames() -> Iterator[np.ndarray]:
            for image in images:
                if not image.frames:
                    raise ValueError(f"image {image.name!r} has no frames to score")
                seen.append(_shapes_only(image))
                yield from image.frames

        emb = embed_views(self.backbone, frames(), self.config.mask_annotations,
                          n_views=max(self.state.views) + 1)
        if not seen:
            return []
        evidence, maps = self.state.evidence_maps(emb)
        scores = _logistic(evidence)
        out, end = [], 0
        for image in seen:
            start, end = end, end + len(image.frames)
            frame_maps = () if maps is None else self.frame_maps(image, scores[start:end],
                                                                 maps[start:end])
            out.append(ImageScore(image.name, image.frame_indices,
                                  float(scores[start:end].max()), frame_maps))
        return out

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
                 head_config: HeadConfig = HeadConfig(), scope: Scope | None = None,
                 description: str = "") -> Detector:
    """Fit a detector from example images (every frame of each counts as one example).

    ``scope`` (DICOM keyword -> allowed values, see :mod:`sonoshot.model.scope`) and
    ``description`` are recorded in the bundle.

    Raises
    ------
    DetectorError
        With fewer than ``config.min_shots`` normal examples, or abnormal examples below
        ``config.min_shots`` when any are given.
    sonoshot.model.scope.ScopeError
        If ``scope`` is invalid.
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
    stats = [image_stats([f]) for f in frames]
    state.validation |= {"rows": [r for r, _, _ in stats], "columns": [c for _, c, _ in stats],
                         "brightness": [b for _, _, b in stats]}
    provenance = {
        "seed": seed,
        "head_config": dataclasses.asdict(head_config),
        "support": [{"file": im.name, "sha256": im.sha256, "label": lab}
                    for lab, ims in (("normal", normal), ("abnormal", abnormal)) for im in ims],
        "prompts": class_prompts(config.prompt_organs) if text is not None else {},
    }
    return Detector(backbone, state, config, provenance, scope, description)


def zero_shot_detector(backbone: Backbone, config: DetectorConfig) -> Detector:
    """A detector from the text anchors alone.

    Raises
    ------
    sonoshot.model.backbones.BackboneError
        If the backbone has no text tower.
    """
    text = text_anchors(backbone, config.prompt_organs)
    empty = Embeddings(np.zeros((0, 1, text.shape[1]), np.float32), None)
    state = fit_state(empty, np.zeros(0), text, 0)
    return Detector(backbone, state, config, {"prompts": class_prompts(config.prompt_organs)})


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in ("bundle.json", "head.pt"):
        digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return digest.hexdigest()


def save_bundle(detector: Detector, folder: Path) -> str:
    """Write ``bundle.json`` and ``head.pt`` into ``folder``; returns the bundle SHA-256.
    ``bundle.json`` records the scope and description beside the provenance."""
    folder.mkdir(parents=True, exist_ok=True)
    state = detector.state
    meta = {
        "format_version": FORMAT_VERSION,
        "name": DETECTOR_NAME,
        "version": __version__,
        "backbone": {"name": detector.backbone_name, "sha256": detector.backbone_sha256,
                     "form": detector.backbone.form},
        "precision": detector.precision,
        "mode": state.mode,
        "dim": state.dim,
        "temperature": state.temperature,
        "threshold": state.threshold,
        "views": list(state.views),
        "global_scale": None if state.global_scale is None else list(state.global_scale),
        "patch_scale": list(state.patch_scale),
        "metrics": state.metrics,
        "validation": state.validation,
        "map_threshold": state.map_threshold,
        "probe": None if state.probe is None else {"bias": state.probe.bias,
                                                   "scale": list(state.probe.scale),
                                                   "term_scale": list(state.probe_scale)},
        "scope": {k: list(v) for k, v in detector.scope.items()},
        "description": detector.description,
        **{k: v for k, v in detector.provenance.items() if k != "bundle_sha256"},
    }
    (folder / "bundle.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    tensors = {}
    if state.protos is not None:
        tensors["protos"] = torch.as_tensor(state.protos)
    if state.bank is not None:
        tensors["patch_bank"] = torch.as_tensor(state.bank.patches)
    if state.probe is not None:
        tensors["probe.weight"] = torch.as_tensor(state.probe.weight)
    if state.head is not None:
        tensors.update({f"head.{k}": v for k, v in state.head.state_dict().items()})
    torch.save(tensors, folder / "head.pt")
    detector.bundle_sha256 = detector.provenance["bundle_sha256"] = _digest(folder)
    return detector.bundle_sha256


def load_bundle(folder: Path, backbone: Backbone, config: DetectorConfig) -> Detector:
    """Load a bundle and bind it to ``backbone``.

    A bundle runs at any precision, but its threshold and standardisation were set at the
    precision it was fitted at (``precision`` in ``bundle.json``; fp32 for bundles written
    before it was recorded): a backbone at another precision is logged as a warning, and so
    is, at bf16 or fp16, a network in another form than the one it was fitted with
    (``backbone.form``; ``trained`` for bundles written before it was recorded). At fp32 the
    folded network's outputs equal the trained one's within float rounding.

    Raises
    ------
    DetectorError
        If files are missing, the format version is unsupported, the backbone's name or
        weights SHA-256 differ from the bundle's, or its scope is invalid. Format-2 bundles
        from before scopes and maps load with no scope, no description, and the map
        threshold at the evidence of their image threshold.
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
    validated = bundle_precision(meta)
    if backbone.precision != validated:
        log.warning("%s: validated at %s, running at %s: scores may differ slightly from the "
                    "validated ones (see docs/model.md); fit it again at %s to validate it there",
                    folder, validated, backbone.precision, backbone.precision)
    elif validated != "fp32" and (form := want.get("form", "trained")) != backbone.form:
        log.warning("%s: validated at %s with its network %s, now running it %s: scores may differ "
                    "slightly from the validated ones (see docs/model.md); fit it again to "
                    "validate it there", folder, validated, form, backbone.form)
    head = None
    head_weights = {k[5:]: v for k, v in tensors.items() if k.startswith("head.")}
    if head_weights:
        head = ProjectionHead(meta["dim"], head_weights["down.weight"].shape[0])
        head.load_state_dict(head_weights)
        head.eval()
    bank = PatchBank(tensors["patch_bank"].numpy()) if "patch_bank" in tensors else None
    state = HeadState(
        meta["mode"], meta["dim"], head,
        tensors["protos"].numpy() if "protos" in tensors else None, meta["temperature"],
        meta["threshold"], bank,
        None if meta["global_scale"] is None else tuple(meta["global_scale"]),
        tuple(meta["patch_scale"]), tuple(meta["views"]), meta["metrics"],
        validation=meta.get("validation", {}),
        map_threshold=meta.get("map_threshold", None if bank is None else _logit(meta["threshold"])))
    if meta.get("probe"):
        state.probe = LesionProbe(tensors["probe.weight"].numpy(), meta["probe"]["bias"],
                                  tuple(meta["probe"]["scale"]))
        state.probe_scale = tuple(meta["probe"]["term_scale"])
    provenance = {k: meta[k] for k in ("seed", "head_config", "support", "prompts") if k in meta}
    provenance["bundle_sha256"] = _digest(folder)
    try:
        return Detector(backbone, state, config, provenance, meta.get("scope") or {},
                        meta.get("description", ""))
    except ValueError as exc:
        raise DetectorError(f"{folder}: bad scope in bundle.json ({exc})") from exc


def demo_bundle_path() -> Path:
    """The packaged demo bundle folder: fitted on a few public BUSI breast images (CC0),
    scope breast, not validated for any site (rebuilt by ``tools/build_demo_bundle.py``)."""
    return Path(__file__).with_name("demo_bundle")


def bundle_precision(meta: dict) -> str:
    """The precision a bundle was fitted and validated at (``fp32`` when not recorded)."""
    return str(meta.get("precision", "fp32"))


def _precision_for(validated: str, config: DetectorConfig) -> str:
    """``detector.precision`` for a bundle validated at ``validated``: ``auto`` keeps the
    bundle's precision where this device runs it natively, else stays ``auto``."""
    if config.precision != "auto":
        return config.precision
    cuda = config.device.startswith("cuda")
    native = {"fp32": True, "bf16": native_bf16(config.device), "fp16": cuda}
    return validated if native.get(validated, False) else "auto"


def load_detector(config: DetectorConfig) -> Detector | None:
    """The daemon's detector: the bundle in ``config.bundle`` (``"demo"``: the packaged demo
    bundle); else zero-shot from the prompts when the backbone has a text tower; else None
    (studies wait for a detector).

    With ``detector.precision = "auto"`` a bundle runs at the precision it was validated at
    when this device computes it natively (a bf16 bundle on a CPU without bf16 runs at fp32,
    with a warning); an explicit precision is used as set (a warning when it differs).

    Raises
    ------
    DetectorError
        If the bundle cannot be loaded or does not match the backbone.
    sonoshot.model.backbones.BackboneError
        If the configured backbone is unknown or its files are missing.
    """
    if config.bundle:
        folder = demo_bundle_path() if config.bundle == DEMO_BUNDLE else Path(config.bundle)
        try:
            meta = json.loads((folder / "bundle.json").read_text())
            name = meta["backbone"]["name"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DetectorError(f"{folder}: not a detector bundle ({exc})") from exc
        if config.backbone not in ("auto", name):
            raise DetectorError(f"{folder}: fitted on backbone {name}, but detector.backbone is "
                                f"{config.backbone}")
        precision = _precision_for(bundle_precision(meta), config)
        backbone = create_backbone(dataclasses.replace(config, backbone=name, precision=precision))
        return load_bundle(folder, backbone, config)
    backbone = create_backbone(config)
    return zero_shot_detector(backbone, config) if backbone.has_text else None
