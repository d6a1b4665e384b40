"""bench/batching.py
=================

Studies per second when many studies are queued: the frames of all of them through the
backbone in shared batches (:meth:`Detector.score_images` over a lazy iterable of every
study's instances, decoded as the batches need them) against one study at a time (each
study read, decoded and scored on its own, as a worker does), in alternating rounds of the
same run.

The queue: ``--studies`` (default 20) studies of one real ultrasound cine instance each, 4
frames sampled per cine (``detector.frames_per_cine``), cycling through the multi-frame files
of the shared DICOM folder and pydicom's test data (JPEG Baseline, JPEG-LS, RLE palette; 240 x
320 to 743 x 975 pixels). The detector is fitted on 4 + 4 BUSI images (as the e2e bench's
bundle) at ``--precision``, with ``--threads`` torch threads, four TTA views per frame.

Usage: ``python bench/batching.py --busi ../shared/data/busi --dicom ../shared/data/dicom``
Prints a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import torch
from pydicom.data import get_testdata_file

from sonoshot.config import DetectorConfig
from sonoshot.model import Detector, create_backbone, fit_detector
from sonoshot.model.evaluate import read_manifest
from sonoshot.model.inputs import InputImage, dataset_frames, read_input
from sonoshot.model.pipeline import overlap_possible
from sonoshot.model.runtime import apply_threads, usable_cores

CINES = ("orthanc-Issue16.dcm", "orthanc-Issue164.dcm", "dcm4che-US-PAL-8-10x-echo",
         "dcm4che-jpeg-ls-Palette.dcm")
PYDICOM_CINES = ("examples_ybr_color.dcm", "color3d_jpeg_baseline.dcm")


def study_files(dicom: Path, count: int) -> list[Path]:
    """``count`` one-instance studies, cycling through the real cine files."""
    files = [dicom / name for name in CINES]
    files += [Path(p) for p in (get_testdata_file(n, download=False) for n in PYDICOM_CINES) if p]
    return list(itertools.islice(itertools.cycle(files), count))


def decoded(paths: list[Path], frames_per_cine: int) -> Iterator[InputImage]:
    for path in paths:
        yield dataset_frames(pydicom.dcmread(path), frames_per_cine)


def one_at_a_time(detector: Detector, studies: list[Path]) -> float:
    """Seconds to score each study on its own, in turn."""
    start = time.perf_counter()
    for path in studies:
        detector.score_images(decoded([path], detector.config.frames_per_cine))
    return time.perf_counter() - start


def batched(detector: Detector, studies: list[Path]) -> float:
    """Seconds to score all studies with their frames in shared batches."""
    start = time.perf_counter()
    scores = detector.score_images(decoded(studies, detector.config.frames_per_cine))
    assert len(scores) == len(studies)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busi", type=Path, required=True)
    parser.add_argument("--dicom", type=Path, required=True)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--threads", type=int, default=0, help="0: one core less than usable")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    threads = apply_threads(args.threads)
    config = DetectorConfig(backbone="efficientnet-lite0", precision=args.precision,
                            device=args.device)
    examples = read_manifest(args.busi)
    support = {label: [read_input(args.busi / e.file, 1) for e in examples if e.label == value][:4]
               for label, value in (("normal", 0), ("abnormal", 1))}
    detector = fit_detector(create_backbone(config), support["normal"], support["abnormal"],
                            config, 0)
    studies = study_files(args.dicom, args.studies)
    one_at_a_time(detector, studies[:2])  # warm-up
    alone_s = batch_s = 0.0
    ratios = []
    for _ in range(args.rounds):
        alone = one_at_a_time(detector, studies)
        together = batched(detector, studies)
        alone_s, batch_s = alone_s + alone, batch_s + together
        ratios.append(alone / together)
    n = len(studies) * args.rounds
    print("\n".join([
        f"{len(studies)} studies x {config.frames_per_cine} frames, efficientnet-lite0 at "
        f"{detector.precision} on {args.device}, {threads} torch threads of {usable_cores()} "
        f"cores, preparation beside the forward: {overlap_possible()}, micro-batch "
        f"{detector.backbone.batch_size}, {args.rounds} alternating rounds, torch "
        f"{torch.__version__}", "",
        "| path | studies/s | ratio | median round | ratio per round |", "|---|---|---|---|---|",
        f"| one study at a time | {n / alone_s:.2f} | 1.00x | | |",
        f"| batched across studies | {n / batch_s:.2f} | {alone_s / batch_s:.2f}x | "
        f"{statistics.median(ratios):.2f}x | " + ", ".join(f"{r:.2f}x" for r in ratios) + " |"]))


if __name__ == "__main__":
    main()
