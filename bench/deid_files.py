"""De-identification of every real ultrasound file on hand, and recall on the drawn-text corpus.

Part 1, per real file (shared, pydicom, pydicom-data; Modality US): the keep-area method, the
text boxes blanked, the verdict, and the PHI strings tesseract reads (header PHI of the file
plus the names burned into the others, ``tests/deid_corpus.py BURNED_ELSEWHERE``) in up to 8
frames before and after. Part 2, the corpus of names, IDs and dates drawn on real frames
(``text_cases``): recall of the drawn boxes (a box counts when 99 % of its ink is blanked) by
place, colour and size, and PHI strings read in the outputs.

    .venv/bin/python bench/deid_files.py [--skip-files] [--skip-corpus]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pydicom  # noqa: E402

from sonoshot.dicom_io.deid import DeidPolicy, deidentify_file  # noqa: E402
from sonoshot.dicom_io.deid.ocr import find_phi, ocr_frames, sample_indices  # noqa: E402
from sonoshot.dicom_io.deid.phi import collect_phi  # noqa: E402
from sonoshot.dicom_io.pixels import UndecodableError, frame_count, iter_frames  # noqa: E402
from tests import deid_corpus as corpus  # noqa: E402
from tests.conftest import find_shared  # noqa: E402
from tests.util import testdata  # noqa: E402

KEY = bytes(range(32))


def _read_phi(path: Path, targets: set[str]) -> int | str:
    try:
        ds = pydicom.dcmread(path)
        return len(find_phi(ocr_frames(list(iter_frames(ds, sample_indices(frame_count(ds), 8)))), targets, 85))
    except UndecodableError:
        return "-"


def real_files(shared_dicom: Path, out: Path) -> None:
    print(f"{'file':34} {'frames':>6} {'method':16} {'boxes':>5} {'verdict':42} {'PHI before':>10} {'after':>5} {'s':>6}")
    clean = 0
    files = corpus.real_us_files(shared_dicom, testdata)
    for path in files:
        source = pydicom.dcmread(path, stop_before_pixels=True)
        targets = set(collect_phi(source).ocr_targets()) | set(corpus.BURNED_ELSEWHERE)
        started = time.perf_counter()
        outcome = deidentify_file(path, out, DeidPolicy(), KEY)
        seconds = time.perf_counter() - started
        clean += outcome.ok
        verdict = "clean" if outcome.ok else f"quarantined: {outcome.reason_code}"
        after = _read_phi(outcome.output, targets) if outcome.ok else "-"
        print(f"{path.name:34} {frame_count(source):6} {outcome.method or '-':16} {outcome.text_boxes:5} {verdict:42} "
              f"{_read_phi(path, targets)!s:>10} {after!s:>5} {seconds:6.1f}")
    print(f"{clean} of {len(files)} clean")


def drawn_corpus(shared_dicom: Path, out: Path) -> None:
    cases = corpus.text_cases(shared_dicom, testdata)
    found, total, read = Counter(), Counter(), 0
    strings = {w.lower().strip(",:") for s in corpus.TEXT_STRINGS for w in s.replace("^", " ").split()}
    targets = {w for w in strings if len(w) >= 4} | {s.lower() for s in corpus.TEXT_STRINGS}
    outputs, failed = [], 0
    for number, case in enumerate(cases):
        src = out / f"case{number}.dcm"
        corpus.text_instance(case, shared_dicom / "orthanc-Issue16.dcm", frames=1).save_as(src, enforce_file_format=True)
        outcome = deidentify_file(src, out / "cases", DeidPolicy(), KEY)
        if not outcome.ok:
            failed += 1
            continue
        (frame,) = iter_frames(pydicom.dcmread(outcome.output))
        outputs.append(frame)
        blanked = ~frame.any(axis=2)
        for drawn in case.drawn:
            hit = blanked[drawn.ink].mean() >= 0.99
            for key in ("all", f"place {drawn.place}", f"colour {drawn.colour}", f"size {drawn.size} px"):
                total[key] += 1
                found[key] += hit
    for start in range(0, len(outputs), 8):
        read += len(find_phi(ocr_frames(outputs[start:start + 8]), targets, 85))
    print(f"drawn-text corpus: {len(cases)} real frames, {total['all']} drawn boxes, {failed} quarantined")
    for key in sorted(total, key=lambda k: (k != "all", k)):
        print(f"  {key:18} recall {found[key] / total[key]:.3f} ({found[key]}/{total[key]})")
    print(f"  PHI strings tesseract reads in the outputs: {read}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-files", action="store_true")
    parser.add_argument("--skip-corpus", action="store_true")
    args = parser.parse_args()
    shared = find_shared()
    if shared is None:
        sys.exit("shared data not found: set SONOSHOT_SHARED")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_files:
            real_files(shared / "data" / "dicom", Path(tmp) / "files")
        if not args.skip_corpus:
            drawn_corpus(shared / "data" / "dicom", Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
