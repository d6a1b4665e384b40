"""bench/maps.py
=============

The added cost of anomaly maps per scored frame: for each decodable shared ultrasound file,
the detector's scoring pass (preparation, four-view backbone forward, patch memory, lesion
probe) and then the maps (:meth:`Detector.frame_maps`: un-view, un-letterbox and place each
frame's map on the instance's pixel grid), in alternating rounds in the same run. The
detector is the packaged demo bundle (efficientnet-lite0, labelled, 8 + 8 BUSI images).

Usage: ``python bench/maps.py --dicom ../shared/data/dicom``
Prints a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pydicom
import torch

from sonoshot.config import DetectorConfig
from sonoshot.model import load_detector
from sonoshot.model.inputs import InputError, dataset_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dicom", type=Path, required=True)
    parser.add_argument("--frames-per-cine", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    detector = load_detector(DetectorConfig(bundle="demo"))
    lines = [f"CPU: {torch.get_num_threads()} torch threads; demo detector "
             f"({detector.backbone_name}, bank {len(detector.state.bank.patches)} patches); "
             f"{args.frames_per_cine} frames per cine; median of {args.rounds} rounds.", "",
             "| file | frames | instance grid | crop | scoring ms/frame | maps ms/frame | "
             "maps / scoring |", "|---|---|---|---|---|---|---|"]
    for path in sorted(args.dicom.iterdir()):
        try:
            image = dataset_frames(pydicom.dcmread(path), args.frames_per_cine)
        except (InputError, ValueError, AttributeError, OSError):
            continue
        scoring, maps = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            scores, grids = detector.analyse_frames(image.frames)
            middle = time.perf_counter()
            detector.frame_maps(image, scores, grids)
            end = time.perf_counter()
            scoring.append((middle - start) / len(image.frames))
            maps.append((end - middle) / len(image.frames))
        s, m = float(np.median(scoring)) * 1e3, float(np.median(maps)) * 1e3
        h, w = image.frames[0].shape[:2]
        rows, columns = image.grid_shape
        lines.append(f"| {path.name} | {len(image.frames)} | {columns}×{rows} | {w}×{h} | "
                     f"{s:.0f} | {m:.1f} | {m / s:.3f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
