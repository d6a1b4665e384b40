"""tools/build_demo_bundle.py
===========================

Rebuild the packaged demo detector, ``sonoshot/model/demo_bundle/``: a labelled bundle fitted
on a few public BUSI breast ultrasound images (Al-Dhabyani et al., Data in Brief 28, 2020;
CC0 1.0) from the shared development split, scope ``BodyPartExamined=BREAST``, described as a
demo that is not validated for any site.

The images are chosen deterministically: the manifest sorted by file name, one image per
near-duplicate group, groups that hold both labels skipped, the first ``--per-class`` of each
label. Fitting runs on one CPU thread with seed 0, so a rebuild from the same files, code and
weights gives the same bundle SHA-256. ``provenance.json`` beside the bundle records the
files, their SHA-256, the command, the sonoshot, torch and backbone versions and the bundle
SHA-256.

Usage: ``python tools/build_demo_bundle.py --busi ../shared/data/busi``
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import defaultdict
from pathlib import Path

import torch

from sonoshot import __version__
from sonoshot.config import DetectorConfig
from sonoshot.model import create_backbone, demo_bundle_path, fit_detector, save_bundle
from sonoshot.model.evaluate import Example, read_manifest
from sonoshot.model.inputs import read_input

DESCRIPTION = "demo detector: breast, public data, not validated for this site"
SCOPE = {"BodyPartExamined": ("BREAST",)}
BACKBONE = "efficientnet-lite0"


def pick(examples: list[Example], per_class: int) -> dict[int, list[Example]]:
    """The first ``per_class`` images of each label by file name, one per group, skipping
    groups that hold both labels."""
    labels_of = defaultdict(set)
    for e in examples:
        labels_of[e.group].add(e.label)
    chosen: dict[int, list[Example]] = {0: [], 1: []}
    used: set[str] = set()
    for e in sorted(examples, key=lambda e: e.file):
        if len(labels_of[e.group]) == 1 and e.group not in used and len(chosen[e.label]) < per_class:
            chosen[e.label].append(e)
            used.add(e.group)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busi", type=Path, required=True, help="the shared BUSI folder")
    parser.add_argument("--per-class", type=int, default=8, help="images per label")
    parser.add_argument("--out", type=Path, default=demo_bundle_path())
    args = parser.parse_args()
    torch.set_num_threads(1)
    chosen = pick(read_manifest(args.busi), args.per_class)
    config = DetectorConfig(backbone=BACKBONE, precision="fp32")  # the same bundle on any CPU
    images = {label: [read_input(args.busi / e.file, 1) for e in chosen[label]] for label in (0, 1)}
    backbone = create_backbone(config)
    detector = fit_detector(backbone, images[0], images[1], config, seed=0, scope=SCOPE,
                            description=DESCRIPTION)
    for stale in args.out.glob("*"):
        stale.unlink()
    digest = save_bundle(detector, args.out)
    provenance = {
        "what": DESCRIPTION,
        "data": "BUSI (Al-Dhabyani et al., Data in Brief 28, 2020), CC0 1.0; the shared "
                "development split, 512x512 JPEG copy (abnormal = benign + malignant)",
        "files": [{"file": e.file, "label": "abnormal" if e.label else "normal", "group": e.group,
                   "sha256": im.sha256}
                  for label in (0, 1) for e, im in zip(chosen[label], images[label])],
        "command": " ".join(["python", *map(shlex.quote, sys.argv)]),
        "sonoshot_version": __version__,
        "torch_version": torch.__version__,
        "backbone": {"name": backbone.name, "sha256": backbone.sha256},
        "seed": 0,
        "bundle_sha256": digest,
    }
    (args.out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({detector.state.mode}, {len(images[0])} + {len(images[1])} images, "
          f"threshold {detector.threshold:.3f}, {size / 1e6:.1f} MB, sha256 {digest[:12]})")


if __name__ == "__main__":
    main()
