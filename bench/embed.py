"""bench/embed.py
==============

Throughput of the detector's embedding path, and the cost/benefit of lower precision.

1. images/s of the whole path, DICOM file -> decoded, cropped, sampled frames -> annotation
   mask, letterbox, resize -> normalise -> backbone forward (embedding and patch features),
   against the bare backbone forward on a ready tensor batch of the same size, in alternating
   rounds in the same run, for efficientnet-lite0 (real weights) and ViT-B/16 with random
   weights (standing in for BiomedCLIP's image tower cost); once with one view per image,
   once with the detector's four test-time augmentation views on both sides;
2. bare forward images/s in fp32, bf16 (CPU autocast) and int8 dynamic quantisation (Linear
   layers), and the change in nearest-prototype AUROC on BUSI (k = 8 and 16, 5 draws,
   efficientnet-lite0; the ViT has random weights, so only its timings mean anything).

Usage: ``python bench/embed.py --busi ../shared/data/busi --dicom ../shared/data/dicom``
Prints a Markdown section to stdout.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from sonoshot.config import DetectorConfig
from sonoshot.model.backbones import Backbone, create_backbone, prepare_image
from sonoshot.model.detector import Embeddings
from sonoshot.model.evaluate import Example, draw_split, methods, read_manifest
from sonoshot.model.head import N_VIEWS, augment_views
from sonoshot.model.inputs import InputError, read_input

BATCH = 16


class RandomViT(Backbone):
    """open_clip ViT-B-16 image tower with random weights: BiomedCLIP's image cost."""

    name = "vit-b-16-random"
    sha256 = ""
    image_size = 224
    mean = (0.48145466, 0.4578275, 0.40821073)
    std = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self) -> None:
        import open_clip

        torch.manual_seed(0)
        self.model = open_clip.create_model("ViT-B-16").visual.eval()

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model(batch), dim=-1)


def full_path(backbone: Backbone, files: list[Path], frames_per_cine: int, views: int = 1
              ) -> tuple[int, float]:
    """Images and seconds of the whole path over ``files``: DICOM file to embedding and patch
    features, as the detector runs it, in batches of BATCH. ``views`` > 1 is the detector's
    test-time augmentation: that many augmentation views per image."""
    count = 0
    pending: list[torch.Tensor] = []
    start = time.perf_counter()

    def flush() -> None:
        nonlocal count, pending
        batch = torch.stack(pending)
        for view in augment_views(batch)[:views] if views > 1 else [batch]:
            backbone.embed_tensors_with_patches(view)
        count += len(pending)
        pending = []

    for path in files:
        for frame in read_input(path, frames_per_cine).frames:
            pending.append(prepare_image(frame, backbone.image_size))
            if len(pending) == BATCH:
                flush()
    if pending:
        flush()
    return count, time.perf_counter() - start


def paired_runs(backbone: Backbone, files: list[Path], frames_per_cine: int, views: int,
                rounds: int) -> tuple[int, float, float, list[float]]:
    """``rounds`` alternations of one full-path pass and bare forwards of as many images
    (times ``views``) on a ready batch, so that slow load drift on a shared machine hits both;
    returns images per pass, total full and bare seconds, and each round's ratio."""
    full_s = bare_s = 0.0
    ratios = []
    count = 0
    for _ in range(rounds):
        count, full = full_path(backbone, files, frames_per_cine, views)
        plain = bare(backbone, count * views)
        full_s, bare_s = full_s + full, bare_s + plain
        ratios.append(plain / full)
    return count, full_s, bare_s, ratios


def bare(backbone: Backbone, images: int, precision: str = "fp32") -> float:
    """Seconds for ``images`` bare forwards on a ready normalised batch of BATCH."""
    batch = backbone.normalise(torch.rand(BATCH, 3, backbone.image_size, backbone.image_size))
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for first in range(0, images, BATCH):
            backbone.forward(batch[:min(BATCH, images - first)])
    return time.perf_counter() - start


def quantised(backbone: Backbone) -> None:
    """Replace Linear layers with int8 dynamic-quantised ones, in place."""
    for attr in ("net", "model"):
        if hasattr(backbone, attr):
            setattr(backbone, attr, torch.ao.quantization.quantize_dynamic(
                getattr(backbone, attr), {torch.nn.Linear}, dtype=torch.qint8))


def prototype_auroc(emb: np.ndarray, examples: list[Example]) -> dict[int, float]:
    """Mean AUROC of the evaluation's ``baseline-prototype`` over 5 labelled draws at k = 8
    and 16, on one embedding per image."""
    labels = np.array([e.label for e in examples])
    method = methods("labelled", has_text=False)["baseline-prototype"]
    embeddings = Embeddings(emb[:, None], None)
    out = {}
    for k in (8, 16):
        aucs = []
        for seed in range(5):
            sup, qry = draw_split(examples, k, seed, "labelled")
            scores = method(embeddings[sup], labels[sup], embeddings[qry], None, seed).scores
            aucs.append(roc_auc_score(labels[qry], scores))
        out[k] = float(np.mean(aucs))
    return out


def busi_embeddings(backbone: Backbone, frames: list[np.ndarray], precision: str) -> np.ndarray:
    """One embedding per BUSI frame through :meth:`Backbone.embed_images` at ``precision``."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        emb = backbone.embed_images(frames, BATCH).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busi", type=Path, required=True)
    parser.add_argument("--dicom", type=Path, required=True)
    parser.add_argument("--frames-per-cine", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2, help="passes over the DICOM files")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternations of full path and bare forwards")
    args = parser.parse_args()
    files = []
    for path in sorted(args.dicom.iterdir()):
        try:
            read_input(path, 1)
            files.append(path)
        except InputError:
            continue
    files = files * args.repeat
    lines = ["## Detector", "",
             f"CPU: {torch.get_num_threads()} torch threads, batch {BATCH}, torch {torch.__version__}; "
             f"{len(files)} DICOM files ({args.repeat} passes over the decodable shared files), "
             f"{args.frames_per_cine} frames per cine.", "",
             "| backbone | views per image | full path DICOM->embedding (img/s) | "
             "bare forward (img/s) | ratio | ratio per round |",
             "|---|---|---|---|---|---|"]
    backbones = {"efficientnet-lite0": create_backbone(DetectorConfig(backbone="efficientnet-lite0")),
                 "vit-b-16-random": RandomViT()}
    for name, backbone in backbones.items():
        bare(backbone, BATCH)  # warm-up
        for views in (1, N_VIEWS):
            count, seconds, bare_s, ratios = paired_runs(backbone, files, args.frames_per_cine,
                                                         views, args.rounds)
            total = count * args.rounds
            lines.append(f"| {name} | {views} | {total / seconds:.1f} | "
                         f"{total / bare_s:.1f} | {bare_s / seconds:.2f}x | "
                         + ", ".join(f"{r:.2f}x" for r in ratios) + " |")
    examples = read_manifest(args.busi)
    busi_frames = [read_input(args.busi / e.file, 1).frames[0] for e in examples]  # read once
    lines += ["", "| backbone | precision | bare forward (img/s) | prototype AUROC k=8 | k=16 |",
              "|---|---|---|---|---|"]
    for name in backbones:
        for precision in ("fp32", "bf16", "int8"):
            backbone = (create_backbone(DetectorConfig(backbone=name)) if name != "vit-b-16-random"
                        else RandomViT())
            if precision == "int8":
                quantised(backbone)
            seconds = bare(backbone, 4 * BATCH, "bf16" if precision == "bf16" else "fp32")
            auroc = "n/a (random weights)"
            if name == "efficientnet-lite0":
                a = prototype_auroc(busi_embeddings(backbone, busi_frames, precision), examples)
                auroc = f"{a[8]:.4f} | {a[16]:.4f}"
            else:
                auroc = f"{auroc} | n/a"
            lines.append(f"| {name} | {precision} | {4 * BATCH / seconds:.1f} | {auroc} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
