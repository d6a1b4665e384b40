"""Benchmark receiving: instances/s and MB/s of sonoshot against DCMTK ``storescp``.

The same set of instances (by default 300, made from real ultrasound files with new UIDs) is
sent with DCMTK ``storescu`` to each receiver in turn, in the same run, a few repetitions each
(interleaved, so drift on a shared machine hits every receiver alike):

- ``storescp``: DCMTK's storage SCP writing every instance to a temp folder (no fsync);
- ``sonoshot``: ``python -m sonoshot --config <tmp toml> serve`` with ``storage.fsync = true``
  (the production default: each instance is fsynced, renamed and its folder fsynced, then
  indexed in SQLite, before Success is returned);
- ``sonoshot fsync off``: the same with ``storage.fsync = false``, for context;
- ``pynetdicom bare``: a minimal pynetdicom SCP whose handler only writes the received bytes to
  a file (no fsync, no checks, no database), for context: the ceiling of any receiver built on
  pynetdicom, on this machine.

Each repetition gets a fresh receiver (empty spool, database or output folder) so no instance is
a duplicate. The wall time of ``storescu`` (association to release) is measured; the table shows
the median over repetitions and the ratio to storescp. Target: sonoshot >= 0.5x storescp.

Run from a checkout: ``.venv/bin/python bench/ingest.py [--count 300] [--repeat 3]``.
Source files: pydicom's ``examples_ybr_color.dcm`` and the shared ultrasound files
(``$SONOSHOT_SHARED`` or ``../shared``), those that are present.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import pydicom.config
import tomli_w
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parent.parent
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # without it each message waits on a delayed ACK
AET = "SONOSHOT"
#: JPEG Baseline and Explicit VR Little Endian ultrasound files (storescu -xy proposes both).
SHARED_SOURCES = ("orthanc-1.2.840.10008.1.2.4.50.dcm", "orthanc-Issue16.dcm", "dcm4che-YBR_422.dcm")
PYDICOM_SOURCES = ("examples_ybr_color.dcm",)


def find_shared() -> Path | None:
    env = os.environ.get("SONOSHOT_SHARED")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared", REPO / "shared"]:
        if (candidate / "data" / "dicom").is_dir():
            return candidate / "data" / "dicom"
    return None


def sources() -> list[Path]:
    found = [Path(p) for name in PYDICOM_SOURCES if (p := get_testdata_file(name, download=False))]
    shared = find_shared()
    if shared is not None:
        found += [shared / name for name in SHARED_SOURCES if (shared / name).is_file()]
    if not found:
        sys.exit("no source files: pydicom's test files and the shared folder are both missing")
    return found


def make_instances(srcs: list[Path], outdir: Path, count: int) -> list[Path]:
    """``count`` distinct instances, round-robin over ``srcs``, new UIDs, ten studies."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE  # real devices' UIDs
    templates = [pydicom.dcmread(src) for src in srcs]
    studies = [generate_uid() for _ in range(10)]
    series = {study: generate_uid() for study in studies}
    files = []
    for i in range(count):
        ds = templates[i % len(templates)]
        ds.StudyInstanceUID = studies[i % len(studies)]
        ds.SeriesInstanceUID = series[ds.StudyInstanceUID]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = outdir / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo(port: int, aet: str) -> bool:
    result = subprocess.run(["echoscu", "-aec", aet, "127.0.0.1", str(port)], env=DCMTK_ENV,
                            capture_output=True, timeout=30)
    return result.returncode == 0


def wait_listening(process: subprocess.Popen, port: int, aet: str, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + 60
    while not echo(port, aet):
        if process.poll() is not None:
            detail = log.read_text(errors="replace")[-3000:] if log else ""
            sys.exit(f"{what} exited with {process.returncode}\n{detail}")
        if time.monotonic() > deadline:
            sys.exit(f"{what} did not answer C-ECHO within 60 s")
        time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def send(port: int, aet: str, files: list[Path]) -> float:
    """Seconds ``storescu`` takes to send ``files`` in one association; exits on any failure."""
    args = ["storescu", "-v", "-xy", "-aet", "BENCHSCU", "-aec", aet, "127.0.0.1", str(port), *map(str, files)]
    start = time.perf_counter()
    result = subprocess.run(args, env=DCMTK_ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"storescu to {aet} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds


def time_receiver(command: list[str], port: int, aet: str, name: str, files: list[Path], out: Path,
                  env: dict[str, str] | None = None) -> float:
    """Start a receiver writing into ``out``, time ``storescu`` sending ``files`` to it, stop it,
    and check every instance arrived; exits on any failure."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(process, port, aet, name)
        seconds = send(port, aet, files)
    finally:
        stop(process)
    stored = sum(1 for p in out.iterdir() if p.is_file())
    if stored != len(files):
        sys.exit(f"{name} stored {stored} of {len(files)} instances")
    return seconds


def run_storescp(files: list[Path], work: Path) -> float:
    out = work / "out"
    out.mkdir()
    port = free_port()
    return time_receiver(["storescp", "--aetitle", "STORESCP", "--output-directory", str(out), "--accept-all",
                          str(port)], port, "STORESCP", "storescp", files, out, env=DCMTK_ENV)


BARE_SCP = """
import sys
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

out = sys.argv[2]
ae = AE(ae_title="BARE")
ae.add_supported_context(Verification)
for context in AllStoragePresentationContexts:
    ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
ae.maximum_pdu_size = 0


def store(event):
    with open(f"{out}/{event.request.AffectedSOPInstanceUID}.dcm", "wb") as f:
        f.write(event.encoded_dataset(include_meta=True))
    return 0x0000


ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, store)])
"""


def run_bare_pynetdicom(files: list[Path], work: Path) -> float:
    out = work / "out"
    out.mkdir()
    port = free_port()
    return time_receiver([sys.executable, "-c", BARE_SCP, str(port), str(out)], port, "BARE",
                         "the bare pynetdicom SCP", files, out)


def run_sonoshot(files: list[Path], work: Path, fsync: bool) -> float:
    var = work / "var"
    key = work / "deid.key"
    key.write_text(os.urandom(32).hex() + "\n")
    port = free_port()
    config = {
        "network": {"ae_title": AET, "port": port, "bind_address": "127.0.0.1"},
        "storage": {"spool_dir": str(var / "spool"), "work_dir": str(var / "work"),
                    "quarantine_dir": str(var / "quarantine"), "min_free_mb": 1, "fsync": fsync},
        "database": {"url": f"sqlite:///{var / 'sonoshot.db'}"},
        # No study completes during the run: only receiving is measured.
        "completion": {"quiet_period_s": 3600.0, "max_wait_s": 7200.0},
        "deid": {"key_file": str(key)},
        "http": {"port": free_port()},
        "logging": {"level": "WARNING"},
    }
    config_path = work / "sonoshot.toml"
    config_path.write_text(tomli_w.dumps(config))
    log = work / "sonoshot.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "sonoshot", "--config", str(config_path), "serve"],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        wait_listening(process, port, AET, "sonoshot", log)
        seconds = send(port, AET, files)
    finally:
        stop(process)
    with sqlite3.connect(var / "sonoshot.db") as db:
        stored = db.execute("select count(*) from instances").fetchone()[0]
    if stored != len(files):
        sys.exit(f"sonoshot stored {stored} of {len(files)} instances\n{log.read_text(errors='replace')[-3000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300, help="instances per run (default 300)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per receiver (default 3)")
    args = parser.parse_args()
    for program in ("storescu", "storescp", "echoscu"):
        if shutil.which(program) is None:
            sys.exit(f"{program} (DCMTK) is required")

    receivers = {
        "storescp (DCMTK)": run_storescp,
        "sonoshot (fsync on)": lambda files, work: run_sonoshot(files, work, fsync=True),
        "sonoshot (fsync off)": lambda files, work: run_sonoshot(files, work, fsync=False),
        "pynetdicom bare": run_bare_pynetdicom,
    }
    times: dict[str, list[float]] = {name: [] for name in receivers}
    with tempfile.TemporaryDirectory(prefix="sonoshot-bench-") as tmp:
        tmp = Path(tmp)
        srcs = sources()
        (tmp / "send").mkdir()
        files = make_instances(srcs, tmp / "send", args.count)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        print(f"{len(files)} instances, {megabytes:.1f} MB, from {', '.join(p.name for p in srcs)}")
        print(f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}")
        for rep in range(args.repeat):
            for name, run in receivers.items():
                work = Path(tempfile.mkdtemp(dir=tmp, prefix="run-"))
                times[name].append(run(files, work))
                shutil.rmtree(work)
            print(f"repetition {rep + 1}/{args.repeat}: "
                  + ", ".join(f"{name} {times[name][-1]:.2f} s" for name in receivers), flush=True)

    base = statistics.median(times["storescp (DCMTK)"])
    print()
    print(f"{'median of ' + str(args.repeat):24} {'seconds':>8} {'inst/s':>8} {'MB/s':>8} {'x storescp':>11}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name:24} {median:8.2f} {len(files) / median:8.1f} {megabytes / median:8.1f} {base / median:11.2f}")
    ratio = base / statistics.median(times["sonoshot (fsync on)"])
    print(f"\nsonoshot (fsync on) / storescp: {ratio:.2f}x (target >= 0.5x): {'met' if ratio >= 0.5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
