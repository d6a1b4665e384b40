"""evaluate.py
===========

The k-shot evaluation behind ``sonoshot eval``: random group-disjoint support draws, the
method, its ablations and three baselines on the same cached embeddings, and a report
(``report.json``, ``report.md``, one ROC PNG per protocol and shot count).

Protocols: ``labelled`` (k normal + k abnormal support images) and ``normal-only`` (k normal).
The query set of a draw is every image whose ``group`` has no member in the support set.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score, roc_curve
from tqdm import tqdm

from sonoshot.dicom_io import pixels
from sonoshot.model import backbones, head, inputs, pipeline
from sonoshot.model.backbones import Backbone
from sonoshot.model.detector import Embeddings, embed_views, fit_state, text_anchors
from sonoshot.model.head import HeadConfig
from sonoshot.model.inputs import InputError, read_input

Protocol = Literal["labelled", "normal-only"]
# scores, threshold from (support, support labels, query, text, seed)
Method = Callable[[Embeddings, np.ndarray, Embeddings, "np.ndarray | None", int],
                  tuple[np.ndarray, float]]


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
              use_global: bool = True, use_patches: bool = True) -> Method:
    def method(support, sl, query, text, seed):
        state = fit_state(support, sl, text if use_text else None, seed, HeadConfig(), project,
                          augment, use_global, use_patches)
        return state.score(query), state.threshold
    return method


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _baseline_prototype(support, sl, query, text, seed):
    s, q = support.views[:, 0], query.views[:, 0]
    pn = _norm(s[sl == 0].mean(0))
    if not (sl == 1).any():
        return 1.0 - q @ pn, float(np.max(1.0 - s @ pn))
    pa = _norm(s[sl == 1].mean(0))
    return 1.0 / (1.0 + np.exp(-(q @ pa - q @ pn) / 0.05)), 0.5


def _baseline_knn(support, sl, query, text, seed):
    """Mean similarity to the m = min(3, k) nearest abnormal minus the m nearest normal."""
    s, q = support.views[:, 0], query.views[:, 0]
    sims = q @ s.T
    if not (sl == 1).any():
        loo = s @ s.T
        np.fill_diagonal(loo, -np.inf)
        return 1.0 - sims.max(1), float(np.max(1.0 - loo.max(1)))
    m = min(3, int((sl == 0).sum()), int((sl == 1).sum()))
    near = [np.sort(sims[:, sl == c], axis=1)[:, -m:].mean(1) for c in (0, 1)]
    return 1.0 / (1.0 + np.exp(-(near[1] - near[0]) / 0.05)), 0.5


def _baseline_logreg(support, sl, query, text, seed):
    model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(support.views[:, 0],
                                                                            sl)
    return model.predict_proba(query.views[:, 0])[:, 1], 0.5


def methods(protocol: Protocol, has_text: bool) -> dict[str, Method]:
    """The method, its ablations and the baselines that apply to a protocol."""
    table: dict[str, Method] = {"sonoshot": _sonoshot()}
    if protocol == "labelled":
        table["sonoshot-no-projection"] = _sonoshot(project=False)
        table["sonoshot-no-augmentation"] = _sonoshot(augment=False)
        table["sonoshot-no-patches"] = _sonoshot(use_patches=False)
        table["sonoshot-patches-only"] = _sonoshot(use_global=False)
    if has_text:
        table["sonoshot-no-text"] = _sonoshot(use_text=False)
    table["baseline-prototype"] = _baseline_prototype
    table["baseline-knn"] = _baseline_knn
    if protocol == "labelled":
        table["baseline-logreg"] = _baseline_logreg
    return table


def run_protocol(embeddings: Embeddings, examples: Sequence[Example], shots: Sequence[int],
                 seeds: int, protocol: Protocol, text: np.ndarray | None
                 ) -> tuple[list[dict], dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]]:
    """Evaluate every method over ``seeds`` draws per shot count.

    Returns
    -------
    rows : list of dict
        ``{method, protocol, shots, seeds, auroc_mean, auroc_std, f1_mean, f1_std,
        accuracy_mean, accuracy_std}`` per method and shot count.
    curves : dict
        ``(method, shots) -> (labels, scores)`` pooled over seeds, for ROC plots.
    """
    labels = np.array([e.label for e in examples])
    table = methods(protocol, text is not None)
    rows, curves = [], {}
    for k in tqdm(shots, desc=f"{protocol} protocol", unit="k"):
        results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in table}
        pooled: dict[str, tuple[list, list]] = {m: ([], []) for m in table}
        for seed in range(seeds):
            sup, qry = draw_split(examples, k, seed, protocol)
            for name, method in table.items():
                scores, threshold = method(embeddings[sup], labels[sup], embeddings[qry], text,
                                           seed)
                pred = (scores > threshold).astype(int)
                results[name].append((roc_auc_score(labels[qry], scores),
                                      f1_score(labels[qry], pred, zero_division=0),
                                      accuracy_score(labels[qry], pred)))
                pooled[name][0].append(labels[qry])
                pooled[name][1].append(scores)
        for name, values in results.items():
            a = np.array(values)
            rows.append({"method": name, "protocol": protocol, "shots": int(k), "seeds": seeds,
                         "auroc_mean": float(a[:, 0].mean()), "auroc_std": float(a[:, 0].std()),
                         "f1_mean": float(a[:, 1].mean()), "f1_std": float(a[:, 1].std()),
                         "accuracy_mean": float(a[:, 2].mean()),
                         "accuracy_std": float(a[:, 2].std())})
            curves[(name, int(k))] = (np.concatenate(pooled[name][0]),
                                      np.concatenate(pooled[name][1]))
    return rows, curves


def markdown_table(rows: Sequence[dict]) -> str:
    """AUROC, F1 and accuracy (mean ± std over seeds) per method (rows) and shots (columns)."""
    shots = sorted({r["shots"] for r in rows})
    lines = []
    for protocol in dict.fromkeys(r["protocol"] for r in rows):
        lines += [f"### {protocol} protocol, {rows[0]['seeds']} seeds", "",
                  "| method | metric | " + " | ".join(f"k={k}" for k in shots) + " |",
                  "|---|---|" + "---|" * len(shots)]
        for name in dict.fromkeys(r["method"] for r in rows if r["protocol"] == protocol):
            by_k = {r["shots"]: r for r in rows if r["method"] == name and r["protocol"] == protocol}
            for metric in ("auroc", "f1", "accuracy"):
                cells = [f"{by_k[k][metric + '_mean']:.3f} ± {by_k[k][metric + '_std']:.3f}"
                         for k in shots]
                lines.append(f"| {name} | {metric.upper() if metric == 'auroc' else metric} | "
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


def evaluate(backbone: Backbone, folder: Path, shots: Sequence[int], seeds: int,
             protocols: Sequence[Protocol], out: Path, cache_dir: Path | None = None,
             mask: bool = True) -> list[dict]:
    """Run the protocols and write ``report.json``, ``report.md`` and ROC PNGs into ``out``.

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
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for protocol in protocols:
        protocol_rows, curves = run_protocol(embeddings, examples, shots, seeds, protocol, text)
        plot_rocs(curves, protocol, out)
        rows += protocol_rows
    (out / "report.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "report.md").write_text(markdown_table(rows))
    return rows
