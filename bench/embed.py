"""bench/embed.py
==============

Throughput of the detector's embedding path, and the cost/benefit of lower precision.

1. images/s of the whole path, DICOM file -> ``dcmread`` -> decoded, cropped, sampled frames
   -> annotation mask, resize, letterbox -> normalise -> backbone forward (embedding and
   patch features), exactly as the detector runs it (:func:`sonoshot.model.pipeline.
   embed_frames`: micro-batches of ``Backbone.batch_size``, preparation beside the forward
   where the cores allow), against the bare forward of as many images on a ready batch of
   the same size, in alternating rounds of the same run; for efficientnet-lite0 (real
   weights) and ViT-B/16 with random weights (standing in for BiomedCLIP's image tower
   cost), at each ``--precisions`` value, with one view per image and with the detector's
   four test-time augmentation views on both sides;
2. bare forward images/s in fp32, bf16 and int8 dynamic quantisation (Linear layers), and
   for efficientnet-lite0 the AUROC on BUSI (labelled protocol, k = 8 and 16, draws 0-4) of
   the evaluation's nearest prototype and of the full sonoshot detector at fp32 and at bf16,
   with the mean change in sonoshot's query scores (the ViT has random weights, so only its
   timings mean anything).

Usage: ``python bench/embed.py --busi ../shared/data/busi --dicom ../shared/data/dicom``
Prints a Markdown section to stdout.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from sonoshot.config import DetectorConfig
from sonoshot.model.backbones import Backbone, LiteFeatures, create_backbone
from sonoshot.model.evaluate import draw_split, embed_examples, methods, read_manifest
from sonoshot.model.head import N_VIEWS
from sonoshot.model.inputs import InputError, dataset_frames, read_input
from sonoshot.model.pipeline import embed_frames, overlap_possible
from sonoshot.model.runtime import apply_threads, resolve_precision, usable_cores

SHOTS = (8, 16)
DRAWS = 5


class RandomViT(Backbone):
    """open_clip ViT-B-16 image tower with random weights: BiomedCLIP's image cost."""

    name = "vit-b-16-random"
    sha256 = ""
    image_size = 224
    mean = (0.48145466, 0.4578275, 0.40821073)
    std = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, precision: str = "fp32") -> None:
        import open_clip

        torch.manual_seed(0)
        self.model = open_clip.create_model("ViT-B-16").visual.eval()
        self.precision = resolve_precision(precision)

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model(batch).float(), dim=-1)


def make_backbone(name: str, precision: str) -> Backbone:
    if name == "vit-b-16-random":
        return RandomViT(precision)
    return create_backbone(DetectorConfig(backbone=name, precision=precision))


def frames_of(files: list[Path], frames_per_cine: int) -> Iterator[np.ndarray]:
    """The frames the detector scores, decoded file by file as they are needed."""
    for path in files:
        yield from dataset_frames(pydicom.dcmread(path), frames_per_cine).frames


def full_path(backbone: Backbone, files: list[Path], frames_per_cine: int, views: int,
              overlap: bool | None = None) -> tuple[int, float]:
    """Images and seconds of the detector's whole path over ``files``."""
    start = time.perf_counter()
    emb, _patches = embed_frames(backbone, frames_of(files, frames_per_cine), n_views=views,
                                 overlap=overlap)
    return len(emb), time.perf_counter() - start


def bare(backbone: Backbone, images: int, views: int = 1) -> float:
    """Seconds for ``images`` x ``views`` forwards on a ready ``[0, 1]`` micro-batch."""
    batch = torch.rand(backbone.batch_size, 3, backbone.image_size, backbone.image_size)
    start = time.perf_counter()
    for first in range(0, images, backbone.batch_size):
        for _ in range(views):
            backbone.embed_tensors_with_patches(batch[:min(len(batch), images - first)])
    return time.perf_counter() - start


def paired_runs(backbone: Backbone, files: list[Path], frames_per_cine: int, views: int,
                rounds: int, overlap: bool | None = None) -> tuple[int, float, float, list[float]]:
    """``rounds`` alternations of one full-path pass and bare forwards of as many images, so
    that load drift on a shared machine hits both; returns images per pass, total full and
    bare seconds, and each round's ratio."""
    full_s = bare_s = 0.0
    ratios = []
    count = 0
    for _ in range(rounds):
        count, full = full_path(backbone, files, frames_per_cine, views, overlap)
        plain = bare(backbone, count, views)
        full_s, bare_s = full_s + full, bare_s + plain
        ratios.append(plain / full)
    return count, full_s, bare_s, ratios


def hold_lock(kind: str, files: list[Path], stop: threading.Event) -> None:
    """Until ``stop``: decode ``files`` (``decode``) or run a pure-Python loop (``python``)."""
    while not stop.is_set():
        if kind == "decode":
            for _ in frames_of(files, 4):
                if stop.is_set():
                    return
        else:
            sum(i * i for i in range(1000))


def lock_rows(backbone: Backbone, files: list[Path], images: int, rounds: int) -> list[str]:
    """Bare forward img/s of ``backbone`` eager and as its graph, alone and beside a thread
    holding the interpreter lock, alternating in ``rounds``."""
    graph, eager = backbone.features, LiteFeatures(backbone.net)
    seconds: dict[tuple[str, str], float] = {}
    for _ in range(rounds):
        for holder in ("none", "decode", "python"):
            for name, features in (("eager", eager), ("graph", graph)):
                backbone.features = features
                stop = threading.Event()
                thread = threading.Thread(target=hold_lock, args=(holder, files, stop))
                if holder != "none":
                    thread.start()
                seconds[name, holder] = seconds.get((name, holder), 0.0) + bare(backbone, images)
                stop.set()
                if thread.is_alive():
                    thread.join()
    backbone.features = graph
    total = images * rounds
    rows = []
    for holder, label in (("none", "alone"), ("decode", "beside DICOM decoding"),
                          ("python", "beside pure Python")):
        eager_s, graph_s = seconds["eager", holder], seconds["graph", holder]
        rows.append(f"| {backbone.precision} | {label} | {total / eager_s:.1f} | "
                    f"{total / graph_s:.1f} | {eager_s / graph_s:.2f}x |")
    return rows


def quantised(backbone: Backbone) -> int:
    """Replace Linear layers with int8 dynamic-quantised ones, in place; returns how many."""
    count = 0
    for attr in ("net", "model"):
        if hasattr(backbone, attr):
            module = getattr(backbone, attr)
            count += sum(isinstance(m, torch.nn.Linear) for m in module.modules())
            setattr(backbone, attr, torch.ao.quantization.quantize_dynamic(
                module, {torch.nn.Linear}, dtype=torch.qint8))
    return count


def busi_aurocs(backbone: Backbone, busi: Path) -> tuple[dict, dict, dict]:
    """Prototype and sonoshot AUROC per k (mean over draws) and sonoshot's query scores per
    (k, draw), from the evaluation's embeddings (four views, patch features)."""
    examples = read_manifest(busi)
    embeddings = embed_examples(backbone, busi, examples, None)
    labels = np.array([e.label for e in examples])
    table = methods("labelled", has_text=False)
    auroc: dict[str, dict[int, float]] = {"baseline-prototype": {}, "sonoshot": {}}
    scores = {}
    for k in SHOTS:
        for name in auroc:
            values = []
            for draw in range(DRAWS):
                sup, qry = draw_split(examples, k, draw, "labelled")
                s = table[name](embeddings[sup], labels[sup], embeddings[qry], None, draw).scores
                values.append(roc_auc_score(labels[qry], s))
                if name == "sonoshot":
                    scores[(k, draw)] = s
            auroc[name][k] = float(np.mean(values))
    return auroc["baseline-prototype"], auroc["sonoshot"], scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busi", type=Path, required=True)
    parser.add_argument("--dicom", type=Path, required=True)
    parser.add_argument("--frames-per-cine", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2, help="passes over the DICOM files")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternations of full path and bare forwards")
    parser.add_argument("--threads", type=int, default=0, help="0: one core less than usable")
    parser.add_argument("--precisions", default="auto,fp32",
                        help="precisions of the throughput table")
    parser.add_argument("--backbones", default="efficientnet-lite0,vit-b-16-random")
    parser.add_argument("--overlap", choices=("auto", "on", "off"), default="auto",
                        help="preparation beside the forward (auto: when two torch teams fit)")
    parser.add_argument("--tables", default="throughput,precision,lock",
                        help="which tables: throughput (1.), precision (2.), lock (3.)")
    args = parser.parse_args()
    threads = apply_threads(args.threads)
    overlap = {"auto": None, "on": True, "off": False}[args.overlap]
    files = []
    for path in sorted(args.dicom.iterdir()):
        try:
            read_input(path, 1)
            files.append(path)
        except InputError:
            continue
    files = files * args.repeat
    names = args.backbones.split(",")
    lines = ["## Detector", "",
             f"CPU: {threads} torch threads of {usable_cores()} cores, preparation beside the "
             f"forward: {overlap_possible() if overlap is None else overlap}, torch "
             f"{torch.__version__}; {len(files)} DICOM "
             f"files ({args.repeat} passes over the decodable shared files), "
             f"{args.frames_per_cine} frames per cine.", "",
             "| backbone | precision | micro-batch | views per image | full path "
             "DICOM->embedding (img/s) | bare forward (img/s) | ratio | median round | "
             "ratio per round |",
             "|---|---|---|---|---|---|---|---|---|"]
    tables = args.tables.split(",")
    for name in names if "throughput" in tables else []:
        for precision in args.precisions.split(","):
            backbone = make_backbone(name, precision)
            bare(backbone, 2 * backbone.batch_size)  # warm-up
            for views in (1, N_VIEWS):
                count, seconds, bare_s, ratios = paired_runs(
                    backbone, files, args.frames_per_cine, views, args.rounds, overlap)
                total = count * args.rounds
                lines.append(f"| {name} | {backbone.precision} | {backbone.batch_size} | {views} "
                             f"| {total / seconds:.1f} | {total / bare_s:.1f} | "
                             f"{bare_s / seconds:.2f}x | {statistics.median(ratios):.2f}x | "
                             + ", ".join(f"{r:.2f}x" for r in ratios) + " |")
    if "lock" in tables:
        lines += ["", "| precision | efficientnet-lite0 bare forward | eager (img/s) | graph "
                  "(img/s) | graph / eager |", "|---|---|---|---|---|"]
        for precision in args.precisions.split(","):
            backbone = make_backbone("efficientnet-lite0", precision)
            bare(backbone, 2 * backbone.batch_size)  # warm-up
            lines += lock_rows(backbone, files, 32, args.rounds)
    if "precision" not in tables:
        print("\n".join(lines))
        return
    lines += ["", "| backbone | precision | bare forward (img/s) | prototype AUROC k=8 | k=16 "
              "| sonoshot AUROC k=8 | k=16 | sonoshot mean abs score change vs fp32 |",
              "|---|---|---|---|---|---|---|---|"]
    reference = None
    for name in names:
        for precision in ("fp32", "bf16", "int8"):
            backbone = make_backbone(name, "bf16" if precision == "bf16" else "fp32")
            replaced = quantised(backbone) if precision == "int8" else None
            seconds = bare(backbone, 64)
            cells = ["n/a (random weights)"] + ["n/a"] * 4
            if name == "efficientnet-lite0" and replaced == 0:
                cells = ["= fp32 (no Linear layer to quantise)"] + [""] * 4
            elif name == "efficientnet-lite0":
                proto, sono, scores = busi_aurocs(backbone, args.busi)
                reference = reference or scores
                change = np.mean([np.abs(scores[key] - reference[key]).mean() for key in scores])
                cells = [f"{proto[8]:.4f}", f"{proto[16]:.4f}", f"{sono[8]:.4f}",
                         f"{sono[16]:.4f}", f"{change:.4f}"]
            lines.append(f"| {name} | {precision} | {64 / seconds:.1f} | " + " | ".join(cells)
                         + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
