"""Benchmark de-identification of the 120-frame color3d_jpeg_baseline.dcm (pydicom-data).

Frames per second and peak Python memory (tracemalloc) of ``deidentify_file`` (OCR off and
OCR on the default 8 frames), against pydicom's plain decode of the same file in the same run
(``ds.pixel_array``, all frames at once). Run: ``.venv/bin/python bench/anonymize.py``.
"""

from __future__ import annotations

import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from sonoshot.dicom_io.deid import DeidPolicy, deidentify_file  # noqa: E402
from sonoshot.dicom_io.pixels import frame_count  # noqa: E402

KEY = bytes(range(32))


def measure(run: Callable[[], object]) -> tuple[float, float]:
    """Seconds and peak traced MiB of ``run()``."""
    tracemalloc.start()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


def main() -> None:
    src = Path(get_testdata_file("color3d_jpeg_baseline.dcm", download=False))
    frames = frame_count(pydicom.dcmread(src, stop_before_pixels=True))
    with tempfile.TemporaryDirectory() as out:
        rows = {
            "pydicom pixel_array (decode only)": measure(lambda: pydicom.dcmread(src).pixel_array),
            "deidentify_file, OCR off": measure(
                lambda: deidentify_file(src, Path(out) / "a", DeidPolicy(ocr=False), KEY)),
            "deidentify_file, OCR 8 frames": measure(
                lambda: deidentify_file(src, Path(out) / "b", DeidPolicy(), KEY)),
        }
    base_s, base_mb = rows["pydicom pixel_array (decode only)"]
    print(f"{src.name}: {frames} frames")
    print(f"{'':36} {'frames/s':>9} {'peak MiB':>9} {'time x':>7} {'memory x':>8}")
    for name, (seconds, mb) in rows.items():
        print(f"{name:36} {frames / seconds:9.1f} {mb:9.1f} {seconds / base_s:7.2f} {mb / base_mb:8.2f}")


if __name__ == "__main__":
    main()
