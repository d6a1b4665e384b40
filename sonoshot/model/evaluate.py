"""evaluate.py
===========

The k-shot evaluation behind ``sonoshot eval``: random group-disjoint support draws, the
method, its ablations and three baselines on the same cached embeddings, and a report
(``report.json``, ``report.md``, one ROC PNG per protocol and shot count). When the data
folder has lesion masks, the anomaly maps are scored too (:mod:`~sonoshot.model.localisation`:
pixel AUROC and peak hit rate beside two floors) and a gallery PNG per protocol shows them.

Protocols: ``labelled`` (k normal + k abnormal support images) and ``normal-only`` (k normal).
The query set of a draw is every image whose ``group`` has no member in the support set.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score, roc_curve
from tqdm import tqdm

from sonoshot.dicom_io import pixels
from sonoshot.model import backbones, head, inputs, pipeline
from sonoshot.model.backbones import Backbone
from sonoshot.model.detector import Embeddings, _logistic, embed_views, fit_state, text_anchors
from sonoshot.model.head import HeadConfig, view_geometry
from sonoshot.model.inputs import InputError, read_input
from sonoshot.model.localisation import (Mask, centre_map, eval_shape, grid_maps, pixel_metrics,
                                         plot_gallery, read_masks)
from sonoshot.model.maps import unview

Protocol = Literal["labelled", "normal-only"]


@dataclass(frozen=True)
class Scored:
    """A method's query scores and threshold, and the per-view patch maps ``(N, V, P)`` it
    produces, by name, with the views they are under."""

    scores: np.ndarray
    threshold: float
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    views: tuple[int, ...] = ()


# Scored from (support, support labels, query, text, seed)
Method = Callable[[Embeddings, np.ndarray, Embeddings, "np.ndarray | None", int], Scored]
MAP_FLOORS = ("patch-distance", "centre")  # pixel-level floors printed beside the method


@dataclass(frozen=True)
class Example:
    file: str
    label: int  # 0 normal, 1 abnormal
    group: str


def read_manifest(folder: Path) -> list[Example]:
    """Rows of ``folder/manifest.csv`` (``file,label,group``; label normal/abnormal).

    Raises
    ------
    InputError
        If the manifest is missing, lacks a column, or has an unknown label.
    """
    path = folder / "manifest.csv"
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise InputError(f"{path}: cannot read the manifest ({exc.strerror})") from exc
    examples = []
    for i, row in enumerate(rows, start=2):
        if not {"file", "label", "group"} <= row.keys():
            raise InputError(f"{path}: columns file,label,group are required")
        if row["label"] not in ("normal", "abnormal"):
            raise InputError(f"{path} line {i}: label {row['label']!r}, expected normal/abnormal")
        examples.append(Example(row["file"], int(row["label"] == "abnormal"), row["group"]))
    return examples


def _embedding_code_sha256() -> str:
    """SHA-256 of the modules that turn a file into embeddings (decode, crop, preparation,
    augmentation views, backbones, batching): any change to them invalidates cached
    embeddings."""
    digest = hashlib.sha256()
    for module in (pixels, inputs, backbones, head, pipeline):
        digest.update(Path(module.__file__).read_bytes())  # type: ignore[arg-type]
    return digest.hexdigest()


def embed_examples(backbone: Backbone, folder: Path, examples: Sequence[Example],
                   cache_dir: Path | None, mask: bool = True) -> Embeddings:
    """View embeddings and patch features of the examples (one frame each, in shared
    micro-batches), cached by backbone, precision, the embedding code and the file list."""
    key = hashlib.sha256(json.dumps([backbone.name, backbone.sha256, backbone.precision,
                                     _embedding_code_sha256(), mask, str(folder.resolve()),
                                     [e.file for e in examples]]).encode()).hexdigest()[:16]
    cache = None if cache_dir is None else cache_dir / f"{backbone.name}-{key}.npz"
    if cache is not None and cache.is_file():
        with np.load(cache) as saved:
            return Embeddings(saved["views"], saved["patches"] if "patches" in saved else None)
    frames = (read_input(folder / ex.file, 1).frames[0]
              for ex in tqdm(examples, desc=f"embedding with {backbone.name}", unit="img"))
    out = embed_views(backbone, frames, mask)
    patches = out.patches
    emb = Embeddings(out.views.astype(np.float32), patches)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"views": emb.views} | ({} if patches is None else {"patches": patches})
        np.savez(cache, **arrays)
    return emb


def draw_split(examples: Sequence[Example], shots: int, seed: int, protocol: Protocol
               ) -> tuple[np.ndarray, np.ndarray]:
    """Support and query indices; support takes one image per group, query shares no group.

    Raises
    ------
    ValueError
        If a class has fewer than ``shots`` groups.
    """
    rng = np.random.default_rng(seed)
    used: set[str] = set()
    support: list[int] = []
    for label in (0, 1) if protocol == "labelled" else (0,):
        chosen = []
        for i in rng.permutation([i for i, e in enumerate(examples) if e.label == label]):
            if examples[i].group not in used:
                chosen.append(int(i))
                used.add(examples[i].group)
            if len(chosen) == shots:
                break
        if len(chosen) < shots:
            raise ValueError(f"only {len(chosen)} groups of label {label} for {shots} shots")
        support += chosen
    query = [i for i, e in enumerate(examples) if e.group not in used]
    return np.array(support), np.array(query)


def _sonoshot(project: bool = True, augment: bool = True, use_text: bool = True,
              use_global: bool = True, use_patches: bool = True, use_probe: bool = True,
              maps: bool = False) -> Method:
    """The detector (or an ablation); with ``maps``, its anomaly maps and the raw
    nearest-normal patch distance (the map floor without head or standardisation)."""
    def method(support, sl, query, text, seed):
        state = fit_state(support, sl, text if use_text else None, seed, HeadConfig(), project,
                          augment, use_global, use_patches, use_probe)
        if not maps or state.bank is None or query.patches is None:
            return Scored(state.score(query), state.threshold)
        evidence, evidence_maps = state.evidence_maps(query)
        raw = state.bank.distances(query.patches, state.views)
        return Scored(_logistic(evidence), state.threshold,
                      {"sonoshot": evidence_maps, "patch-distance": raw}, state.views)
    return method


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _baseline_prototype(support, sl, query, text, seed):
    s, q = support.views[:, 0], query.views[:, 0]
    pn = _norm(s[sl == 0].mean(0))
    if not (sl == 1).any():
        return Scored(1.0 - q @ pn, float(np.max(1.0 - s @ pn)))
    pa = _norm(s[sl == 1].mean(0))
    return Scored(1.0 / (1.0 + np.exp(-(q @ pa - q @ pn) / 0.05)), 0.5)


def _baseline_knn(support, sl, query, text, seed):
    """Mean similarity to the m = min(3, k) nearest abnormal minus the m nearest normal."""
    s, q = support.views[:, 0], query.views[:, 0]
    sims = q @ s.T
    if not (sl == 1).any():
        loo = s @ s.T
        np.fill_diagonal(loo, -np.inf)
        return Scored(1.0 - sims.max(1), float(np.max(1.0 - loo.max(1))))
    m = min(3, int((sl == 0).sum()), int((sl == 1).sum()))
    near = [np.sort(sims[:, sl == c], axis=1)[:, -m:].mean(1) for c in (0, 1)]
    return Scored(1.0 / (1.0 + np.exp(-(near[1] - near[0]) / 0.05)), 0.5)


def _baseline_logreg(support, sl, query, text, seed):
    model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(support.views[:, 0],
                                                                            sl)
    return Scored(model.predict_proba(query.views[:, 0])[:, 1], 0.5)


def methods(protocol: Protocol, has_text: bool) -> dict[str, Method]:
    """The method, its ablations and the baselines that apply to a protocol."""
    table: dict[str, Method] = {"sonoshot": _sonoshot(maps=True)}
    if protocol == "labelled":
        table["sonoshot-no-projection"] = _sonoshot(project=False)
        table["sonoshot-no-augmentation"] = _sonoshot(augment=False)
        table["sonoshot-no-patches"] = _sonoshot(use_patches=False)
        table["sonoshot-no-probe"] = _sonoshot(use_probe=False)
        table["sonoshot-patches-only"] = _sonoshot(use_global=False, use_probe=False)
    if has_text:
        table["sonoshot-no-text"] = _sonoshot(use_text=False)
    table["baseline-prototype"] = _baseline_prototype
    table["baseline-knn"] = _baseline_knn
    if protocol == "labelled":
        table["baseline-logreg"] = _baseline_logreg
    return table


@dataclass(frozen=True)
class PixelTruth:
    """What pixel-level metrics need: lesion masks by example index, every example's
    ``(H, W)``, and where each augmentation view puts a point (:func:`view_geometry`)."""

    masks: dict[int, Mask]
    shapes: Sequence[tuple[int, int]]
    geometry: Sequence[tuple[float, bool]]

    def metrics(self, scored: Scored, query: np.ndarray) -> dict[str, tuple[float, float]]:
        """``name -> (pixel AUROC, peak hit rate)`` of each of ``scored``'s maps and of the
        centre floor on the ``query`` examples."""
        masks = [self.masks.get(int(i)) for i in query]
        shapes = [self.shapes[int(i)] for i in query]
        geometry = [self.geometry[v] for v in scored.views]
        out = {name: pixel_metrics(grid_maps(grids, geometry, shapes), masks)
               for name, grids in scored.maps.items()}
        out["centre"] = pixel_metrics([centre_map(eval_shape(s)) for s in shapes], masks)
        return out


def _mean_std(name: str, values: Sequence[float]) -> dict[str, float]:
    return {f"{name}_mean": float(np.mean(values)), f"{name}_std": float(np.std(values))}


def run_protocol(embeddings: Embeddings, examples: Sequence[Example], shots: Sequence[int],
                 seeds: int, protocol: Protocol, text: np.ndarray | None,
                 truth: PixelTruth | None = None, first_seed: int = 0
                 ) -> tuple[list[dict], dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]]:
    """Evaluate every method over ``seeds`` draws per shot count (draws ``first_seed`` …
    ``first_seed + seeds - 1``; the reported tables use 0 …, tuning used 100 …).

    Returns
    -------
    rows : list of dict
        ``{level: "image", method, protocol, shots, seeds, auroc_mean, auroc_std, f1_mean,
        f1_std, accuracy_mean, accuracy_std}`` per method and shot count; with ``truth``, also
        ``{level: "pixel", method, protocol, shots, seeds, pixel_auroc_mean, pixel_auroc_std,
        peak_hit_mean, peak_hit_std}`` for sonoshot's maps and the :data:`MAP_FLOORS`.
    curves : dict
        ``(method, shots) -> (labels, scores)`` pooled over seeds, for ROC plots.
    """
    labels = np.array([e.label for e in examples])
    table = methods(protocol, text is not None)
    rows, curves = [], {}
    for k in tqdm(shots, desc=f"{protocol} protocol", unit="k"):
        results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in table}
        pooled: dict[str, tuple[list, list]] = {m: ([], []) for m in table}
        pixel: dict[str, list[tuple[float, float]]] = {}
        for seed in range(first_seed, first_seed + seeds):
            sup, qry = draw_split(examples, k, seed, protocol)
            for name, method in table.items():
                scored = method(embeddings[sup], labels[sup], embeddings[qry], text, seed)
                pred = (scored.scores > scored.threshold).astype(int)
                results[name].append((roc_auc_score(labels[qry], scored.scores),
                                      f1_score(labels[qry], pred, zero_division=0),
                                      accuracy_score(labels[qry], pred)))
                pooled[name][0].append(labels[qry])
                pooled[name][1].append(scored.scores)
                if truth is not None and scored.maps:
                    for map_name, values in truth.metrics(scored, qry).items():
                        pixel.setdefault(map_name, []).append(values)
        for name, values in results.items():
            a = np.array(values)
            rows.append({"level": "image", "method": name, "protocol": protocol,
                         "shots": int(k), "seeds": seeds, **_mean_std("auroc", a[:, 0]),
                         **_mean_std("f1", a[:, 1]), **_mean_std("accuracy", a[:, 2])})
            curves[(name, int(k))] = (np.concatenate(pooled[name][0]),
                                      np.concatenate(pooled[name][1]))
        for name, values in pixel.items():
            a = np.array(values)
            rows.append({"level": "pixel", "method": name, "protocol": protocol,
                         "shots": int(k), "seeds": seeds, **_mean_std("pixel_auroc", a[:, 0]),
                         **_mean_std("peak_hit", a[:, 1])})
    return rows, curves


METRIC_LABELS = {"auroc": "AUROC", "f1": "f1", "accuracy": "accuracy",
                 "pixel_auroc": "pixel AUROC", "peak_hit": "peak hit rate"}


def markdown_table(rows: Sequence[dict]) -> str:
    """Mean ± std over seeds per method (rows) and shots (columns): AUROC, F1 and accuracy
    per protocol; then pixel AUROC and peak hit rate where there are pixel rows (the floors
    marked)."""
    shots = sorted({r["shots"] for r in rows})
    lines = []
    for level, metrics, heading in (("image", ("auroc", "f1", "accuracy"), ""),
                                    ("pixel", ("pixel_auroc", "peak_hit"), ", pixel level")):
        chosen = [r for r in rows if r.get("level", "image") == level]
        for protocol in dict.fromkeys(r["protocol"] for r in chosen):
            lines += [f"### {protocol} protocol{heading}, {chosen[0]['seeds']} seeds", "",
                      "| method | metric | " + " | ".join(f"k={k}" for k in shots) + " |",
                      "|---|---|" + "---|" * len(shots)]
            for name in dict.fromkeys(r["method"] for r in chosen if r["protocol"] == protocol):
                by_k = {r["shots"]: r for r in chosen
                        if r["method"] == name and r["protocol"] == protocol}
                shown = f"floor: {name}" if name in MAP_FLOORS else name
                for metric in metrics:
                    cells = [f"{by_k[k][metric + '_mean']:.3f} ± {by_k[k][metric + '_std']:.3f}"
                             if k in by_k else "" for k in shots]
                    lines.append(f"| {shown} | {METRIC_LABELS[metric]} | "
                                 + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def plot_rocs(curves: dict, protocol: str, out: Path) -> list[Path]:
    """One PNG per shot count with every method's ROC (pooled over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for k in sorted({k for _, k in curves}):
        fig, ax = plt.subplots(figsize=(5, 5))
        for name in dict.fromkeys(m for m, kk in curves if kk == k):
            labels, scores = curves[(name, k)]
            fpr, tpr, _ = roc_curve(labels, scores)
            ax.plot(fpr, tpr, label=f"{name} ({roc_auc_score(labels, scores):.3f})",
                    lw=2 if name == "sonoshot" else 1, ls="-" if name.startswith("sonoshot")
                    else "--")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
        ax.set(xlabel="false positive rate", ylabel="true positive rate",
               title=f"{protocol}, k={k} (pooled over seeds)")
        ax.legend(fontsize=7, loc="lower right")
        path = out / f"roc-{protocol}-k{k}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def gallery(folder: Path, examples: Sequence[Example], embeddings: Embeddings,
            truth: PixelTruth, shots: int, protocol: Protocol, text: np.ndarray | None,
            out: Path, first_seed: int = 0, count: int = 6) -> Path:
    """``gallery-<protocol>-k<shots>.png``: the first draw's query images at evenly spaced places in
    file order (two thirds abnormal), each beside sonoshot's map and the raw patch distance."""
    labels = np.array([e.label for e in examples])
    sup, qry = draw_split(examples, shots, first_seed, protocol)
    scored = _sonoshot(maps=True)(embeddings[sup], labels[sup], embeddings[qry], text,
                                  first_seed)
    abnormal = [j for j, i in enumerate(qry) if int(i) in truth.masks]
    normal = [j for j, i in enumerate(qry) if labels[i] == 0]
    n_abnormal = min(len(abnormal), count - count // 3)
    picked = [abnormal[int(t)] for t in np.linspace(0, len(abnormal) - 1, n_abnormal)]
    picked += [normal[int(t)] for t in np.linspace(0, len(normal) - 1, min(len(normal),
                                                                            count - n_abnormal))]
    geometry = [truth.geometry[v] for v in scored.views]
    maps: dict[str, list[np.ndarray]] = {name: [] for name in scored.maps}
    for j in picked:
        for name, grids in scored.maps.items():
            cells = int(round(grids.shape[-1] ** 0.5))
            maps[name].append(unview(grids[j].reshape(len(geometry), cells, cells), geometry,
                                     truth.shapes[int(qry[j])]))
    images = [read_input(folder / examples[int(qry[j])].file, 1).frames[0] for j in picked]
    title = f"{protocol}, k={shots}, draw {first_seed}: cyan = lesion mask, + = the map's peak"
    return plot_gallery(images, [truth.masks.get(int(qry[j])) for j in picked], maps, title,
                        out / f"gallery-{protocol}-k{shots}.png")


def evaluate(backbone: Backbone, folder: Path, shots: Sequence[int], seeds: int,
             protocols: Sequence[Protocol], out: Path, cache_dir: Path | None = None,
             mask: bool = True, first_seed: int = 0) -> list[dict]:
    """Run the protocols and write ``report.json``, ``report.md`` and ROC PNGs into ``out``;
    with lesion masks in ``folder/masks``, pixel-level rows and a gallery PNG per protocol.

    Raises
    ------
    InputError
        If the manifest or an image cannot be read.
    ValueError
        If a class has too few groups for the largest shot count.
    """
    examples = read_manifest(folder)
    embeddings = embed_examples(backbone, folder, examples, cache_dir, mask)
    text = text_anchors(backbone) if backbone.has_text else None
    masks = read_masks(folder, [e.file for e in examples])
    truth = None
    if masks and embeddings.patches is not None:
        shapes = [read_input(folder / e.file, 1).frames[0].shape[:2] for e in examples]
        truth = PixelTruth(masks, shapes, view_geometry(backbone.image_size))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for protocol in protocols:
        protocol_rows, curves = run_protocol(embeddings, examples, shots, seeds, protocol, text,
                                             truth, first_seed)
        plot_rocs(curves, protocol, out)
        if truth is not None:
            gallery(folder, examples, embeddings, truth, max(shots), protocol, text, out,
                    first_seed)
        rows += protocol_rows
    (out / "report.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "report.md").write_text(markdown_table(rows))
    return rows
