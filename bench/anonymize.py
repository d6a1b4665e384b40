"""Benchmark de-identification of the 120-frame color3d_jpeg_baseline.dcm (pydicom-data).

Frames per second and peak memory of ``deidentify_file`` with text detection (this checkout)
against today's path without it (the code at ``--baseline-ref``, by default the last commit
before text detection, unpacked from git into a temporary folder), in the same run, each in its
own process (the text detector's model is loaded before the clock starts, as in the daemon).
pydicom's plain decode of the whole clip (``ds.pixel_array``) is the reference row. Peak memory:
Python's traced allocations (tracemalloc, numpy arrays included) and the process' peak RSS.

    .venv/bin/python bench/anonymize.py [--repeat 3] [--baseline-ref f59710e]

Target (issue 10): with text detection ≥ 0.5x today's frames/s, with the same bounded memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE_REF = "f59710e"  # the last commit before text detection (issue 10)
KEY = bytes(range(32))


def _child(spec: dict) -> None:
    """Measure one configuration in this process (its sonoshot comes from PYTHONPATH)."""
    import pydicom
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("color3d_jpeg_baseline.dcm", download=False))
    if spec["kind"] == "decode":
        run = lambda: pydicom.dcmread(src).pixel_array  # noqa: E731
    else:
        from sonoshot.dicom_io.deid import DeidPolicy, deidentify_file

        policy = DeidPolicy(**spec["policy"])
        if spec["kind"] == "text":
            from sonoshot.dicom_io.deid.textdetect import text_detector

            text_detector(policy.text_threads)  # loaded once per process, before the clock
        out = Path(spec["out"])
        run = lambda: deidentify_file(src, out, policy, KEY)  # noqa: E731
    tracemalloc.start()
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    ok = getattr(result, "ok", True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "rss_mib": rss, "ok": ok,
                      "method": getattr(result, "method", None)}))


def _measure(code: Path, spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    run = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; medians are printed")
    parser.add_argument("--baseline-ref", default=BASELINE_REF, help="git commit of today's path")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "baseline"
        baseline.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline_ref, "sonoshot"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        rows = {
            "pydicom pixel_array (decode only)": (REPO, {"kind": "decode"}),
            f"today's path ({args.baseline_ref}), OCR 8 frames": (baseline, {"kind": "deid", "policy": {}}),
            "text detection 4 frames, OCR 8 others": (REPO, {"kind": "text", "policy": {}}),
            "  the same, detector on 2 threads": (REPO, {"kind": "text", "policy": {"text_threads": 2}}),
        }
        results: dict[str, list[dict]] = {name: [] for name in rows}
        for round_ in range(args.repeat):
            for name, (code, spec) in rows.items():
                results[name].append(_measure(code, {**spec, "out": f"{tmp}/out{round_}{len(results[name])}"}))
    frames = 120
    today = statistics.median(r["seconds"] for r in results[next(n for n in rows if n.startswith("today"))])
    print(f"color3d_jpeg_baseline.dcm: {frames} frames, median of {args.repeat} interleaved rounds")
    print(f"{'':40} {'frames/s':>9} {'x today':>8} {'traced MiB':>11} {'peak RSS MiB':>13}  method")
    for name, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        peak = max(r["peak_mib"] for r in runs)
        rss = max(r["rss_mib"] for r in runs)
        method = runs[0]["method"] or ""
        print(f"{name:40} {frames / seconds:9.1f} {today / seconds:8.2f} {peak:11.1f} {rss:13.1f}  {method}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
