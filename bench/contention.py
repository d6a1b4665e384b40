"""bench/contention.py
====================

Two torch processes on one machine: ``sonoshot fit`` alone, then two ``sonoshot fit`` at
once (as ``fit`` or ``eval`` next to the daemon), with every process using all cores for
torch (``--threads`` = cores, what torch does when nothing sets it) and with the default
(``--threads 0``: one core less than usable), in the same run.

Each fit reads 6 normal + 6 abnormal BUSI images (read in place through symlinks) and embeds
them under the four augmentation views with efficientnet-lite0.

Usage: ``python bench/contention.py --busi ../shared/data/busi``
Prints a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sonoshot.model.evaluate import read_manifest
from sonoshot.model.runtime import default_threads, usable_cores


def fit_command(folder: Path, out: Path, threads: int, precision: str) -> list[str]:
    return [sys.executable, "-m", "sonoshot", "fit", "--normal", str(folder / "normal"),
            "--abnormal", str(folder / "abnormal"), "--backbone", "efficientnet-lite0",
            "--precision", precision, "--threads", str(threads), "--out", str(out)]


def run_together(commands: list[list[str]]) -> list[float]:
    """Start the commands at once; the wall seconds of each."""
    logs = [tempfile.TemporaryFile() for _ in commands]  # progress bars: no pipe to fill
    start = time.perf_counter()
    running = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=log)
               for c, log in zip(commands, logs)]
    ended: dict[int, float] = {}
    while len(ended) < len(running):
        for i, process in enumerate(running):
            if i not in ended and process.poll() is not None:
                ended[i] = time.perf_counter() - start
                if process.returncode != 0:
                    logs[i].seek(0)
                    err = logs[i].read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"sonoshot fit failed: {err}")
        time.sleep(0.05)
    return [ended[i] for i in range(len(running))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busi", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=6)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    examples = read_manifest(args.busi)
    rows = ["| torch threads per process | fit alone (s) | two fits at once (s, each) | "
            "slowdown |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label, value in (("normal", 0), ("abnormal", 1)):
            (folder / label).mkdir()
            for e in [e for e in examples if e.label == value][:args.per_class]:
                (folder / label / Path(e.file).name).symlink_to((args.busi / e.file).resolve())
        for threads in (usable_cores(), 0):
            (alone,) = run_together([fit_command(folder, folder / "a", threads, args.precision)])
            both = run_together([fit_command(folder, folder / n, threads, args.precision)
                                 for n in ("b", "c")])
            shown = f"{threads} (all cores)" if threads else f"0 (default: {default_threads()})"
            rows.append(f"| {shown} | {alone:.1f} | " + ", ".join(f"{s:.1f}" for s in both)
                        + f" | {max(both) / alone:.2f}x |")
    print(f"{usable_cores()} cores, {2 * args.per_class} BUSI images per fit, precision "
          f"{args.precision}\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
