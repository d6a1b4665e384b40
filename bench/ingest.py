"""Benchmark receiving: instances/s and MB/s of sonoshot against DCMTK ``storescp``.

The same set of instances (by default 300, made from real ultrasound files with new UIDs) is
sent with DCMTK ``storescu`` to each receiver in turn, in the same run, a few repetitions each
(interleaved, so drift on a shared machine hits every receiver alike):

- ``storescp``: DCMTK's storage SCP writing every instance to a temp folder (no fsync); with
  ``--senders N > 1`` it runs with ``--fork`` (a process per association);
- ``sonoshot``: ``python -m sonoshot --config <tmp toml> serve`` with ``storage.fsync = true``
  (the production default: each instance is fsynced, renamed and its folder fsynced, then
  indexed in SQLite, before Success is returned) and the connection limits at their defaults;
- ``sonoshot limits off``: the same with the limits as loose as they go (``max_pdu_size = 0``,
  nothing streamed, pending caps of 10,000): what the limits cost;
- ``sonoshot fsync off``: the same with ``storage.fsync = false``, for context;
- ``pynetdicom bare``: a minimal stock pynetdicom SCP whose handler only writes the received
  bytes to a file (no fsync, no checks, no database): the ceiling of a receiver built on an
  unmodified pynetdicom, on this machine.

Each repetition gets a fresh receiver (empty spool, database or output folder) so no instance is
a duplicate. Beside the wall time, the receiver's own CPU time while it received (user and
system, from /proc; storescp's forked children included) is shown per instance: it moves much
less with the load from other work than the wall time does. With ``--senders N`` the instances are split into N parts sent by N ``storescu`` at
once (one association each); the time is from the first start to the last release. The table
shows the median over repetitions and the ratio to storescp. Targets (issue 13): sonoshot
>= 0.35x storescp over one association, >= 0.5x with 4 senders against ``storescp --fork``.

``--while-scoring`` instead compares sonoshot's ingest while its worker scores studies (a
detector fitted here by tests/daemon.py ``fit_demo_bundle``, 30-frame cines de-identified with
OCR and scored) with its ingest while idle, same daemon configuration, same run; scoring runs
with the daemon's default threads (``detector.threads = 0``: a core left to the receiver on a
small machine) and with ``OMP_NUM_THREADS=1`` in its environment (every OpenMP pool at one
thread, not only torch's). Target: >= 0.8x of idle.

Run from a checkout: ``.venv/bin/python bench/ingest.py [--count 300] [--repeat 3] [--senders 4]
[--while-scoring]``. Source files: pydicom's ``examples_ybr_color.dcm`` and the shared ultrasound
files (``$SONOSHOT_SHARED`` or ``../shared``), those that are present.
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
import tomllib
from collections.abc import Callable
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
LIMITS_OFF = {"max_pdu_size": 0, "stream_above_mb": 4096, "max_pending": 10000, "max_pending_per_address": 10000}


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
    deadline = time.monotonic() + 120
    while not echo(port, aet):
        if process.poll() is not None:
            detail = log.read_text(errors="replace")[-3000:] if log else ""
            sys.exit(f"{what} exited with {process.returncode}\n{detail}")
        if time.monotonic() > deadline:
            sys.exit(f"{what} did not answer C-ECHO within 120 s")
        time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its reaped children (``storescp --fork``), user and system."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


#: CPU seconds each receiver spent while it received, per run (filled by ``send``).
CPU: list[float] = []


def send(port: int, aet: str, groups: list[list[Path]], calling_aet: str = "BENCHSCU",
         receiver: int | None = None) -> float:
    """Seconds until ``storescu`` has sent every group, one association per group, all at once;
    exits on any failure. With ``receiver`` (a pid), its CPU time meanwhile goes into :data:`CPU`."""
    cpu_before = cpu_seconds(receiver) if receiver else 0.0
    start = time.perf_counter()
    senders = [subprocess.Popen(["storescu", "-xy", "-aet", calling_aet, "-aec", aet, "127.0.0.1", str(port),
                                 *map(str, files)], env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for files in groups]
    errors = [sender.communicate()[1] for sender in senders]
    seconds = time.perf_counter() - start
    if receiver:
        time.sleep(0.2)  # storescp --fork reaps the last child after its association ends
        CPU.append(cpu_seconds(receiver) - cpu_before)
    for sender, error in zip(senders, errors):
        if sender.returncode != 0:
            sys.exit(f"storescu to {aet} failed ({sender.returncode}):\n{error[-3000:]}")
    return seconds


def split(files: list[Path], parts: int) -> list[list[Path]]:
    return [files[n::parts] for n in range(parts)]


def time_receiver(command: list[str], port: int, aet: str, name: str, groups: list[list[Path]], out: Path,
                  env: dict[str, str] | None = None) -> float:
    """Start a receiver writing into ``out``, time sending ``groups`` to it, stop it, and check every
    instance arrived (storescp --fork writes into subfolders); exits on any failure."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(process, port, aet, name)
        seconds = send(port, aet, groups, receiver=process.pid)
    finally:
        stop(process)
    stored = sum(1 for p in out.rglob("*") if p.is_file())
    expected = sum(len(g) for g in groups)
    if stored != expected:
        sys.exit(f"{name} stored {stored} of {expected} instances")
    return seconds


def run_storescp(groups: list[list[Path]], work: Path) -> float:
    out = work / "out"
    out.mkdir()
    port = free_port()
    fork = ["--fork"] if len(groups) > 1 else []
    return time_receiver(["storescp", *fork, "--aetitle", "STORESCP", "--output-directory", str(out), "--accept-all",
                          str(port)], port, "STORESCP", "storescp", groups, out, env=DCMTK_ENV)


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


def run_bare_pynetdicom(groups: list[list[Path]], work: Path) -> float:
    out = work / "out"
    out.mkdir()
    port = free_port()
    return time_receiver([sys.executable, "-c", BARE_SCP, str(port), str(out)], port, "BARE",
                         "the bare pynetdicom SCP", groups, out)


def sonoshot_config(work: Path, fsync: bool, network: dict | None = None, **sections: dict) -> Path:
    var = work / "var"
    key = work / "deid.key"
    key.write_text(os.urandom(32).hex() + "\n")
    config = {
        "network": {"ae_title": AET, "port": free_port(), "bind_address": "127.0.0.1", **(network or {})},
        "storage": {"spool_dir": str(var / "spool"), "work_dir": str(var / "work"),
                    "quarantine_dir": str(var / "quarantine"), "min_free_mb": 1, "fsync": fsync},
        "database": {"url": f"sqlite:///{var / 'sonoshot.db'}"},
        # No study completes during the run: only receiving is measured.
        "completion": {"quiet_period_s": 3600.0, "max_wait_s": 7200.0},
        "deid": {"key_file": str(key)},
        "http": {"port": free_port()},
        "logging": {"level": "WARNING"},
    }
    for name, section in sections.items():
        config[name] = {**config.get(name, {}), **section}
    path = work / "sonoshot.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def start_sonoshot(config_path: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int, Path]:
    with open(config_path, "rb") as f:
        port = tomllib.load(f)["network"]["port"]
    log = config_path.parent / "sonoshot.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "sonoshot", "--config", str(config_path), "serve"],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                   env={**(env or os.environ), "PYTHONPATH": str(REPO)})
    wait_listening(process, port, AET, "sonoshot", log)
    return process, port, log


def count_stored(work: Path) -> int:
    with sqlite3.connect(work / "var" / "sonoshot.db") as db:
        return db.execute("select count(*) from instances").fetchone()[0]


def run_sonoshot(groups: list[list[Path]], work: Path, fsync: bool, network: dict | None = None) -> float:
    process, port, log = start_sonoshot(sonoshot_config(work, fsync, network))
    try:
        seconds = send(port, AET, groups, receiver=process.pid)
    finally:
        stop(process)
    stored, expected = count_stored(work), sum(len(g) for g in groups)
    if stored != expected:
        sys.exit(f"sonoshot stored {stored} of {expected} instances\n{log.read_text(errors='replace')[-3000:]}")
    return seconds


def table(times: dict[str, list[float]], count: int, megabytes: float, repeat: int, base_name: str,
          cpu: dict[str, list[float]] | None = None) -> dict[str, float]:
    base = statistics.median(times[base_name])
    print()
    print(f"{'median of ' + str(repeat):26} {'seconds':>8} {'inst/s':>8} {'MB/s':>8} {'x ' + base_name.split()[0]:>11}"
          + (f" {'CPU ms/inst':>12}" if cpu else ""))
    ratios = {}
    for name, seconds in times.items():
        median = statistics.median(seconds)
        ratios[name] = base / median
        print(f"{name:26} {median:8.2f} {count / median:8.1f} {megabytes / median:8.1f} {ratios[name]:11.2f}"
              + (f" {statistics.median(cpu[name]) * 1000 / count:12.2f}" if cpu else ""))
    return ratios


def ingest(args: argparse.Namespace, files: list[Path], megabytes: float, tmp: Path) -> int:
    groups = split(files, args.senders)
    receivers: dict[str, Callable[[list[list[Path]], Path], float]] = {
        "storescp (DCMTK)" + (" --fork" if args.senders > 1 else ""): run_storescp,
        "sonoshot (fsync on)": lambda g, work: run_sonoshot(g, work, fsync=True),
        "sonoshot (limits off)": lambda g, work: run_sonoshot(g, work, fsync=True, network=LIMITS_OFF),
        "sonoshot (fsync off)": lambda g, work: run_sonoshot(g, work, fsync=False),
        "pynetdicom bare": run_bare_pynetdicom,
    }
    times: dict[str, list[float]] = {name: [] for name in receivers}
    cpu: dict[str, list[float]] = {name: [] for name in receivers}
    for rep in range(args.repeat):
        for name, run in receivers.items():
            work = Path(tempfile.mkdtemp(dir=tmp, prefix="run-"))
            times[name].append(run(groups, work))
            cpu[name].append(CPU.pop())
            shutil.rmtree(work)
        print(f"repetition {rep + 1}/{args.repeat}: "
              + ", ".join(f"{name} {times[name][-1]:.2f} s" for name in receivers), flush=True)
    base_name = next(iter(receivers))
    ratios = table(times, len(files), megabytes, args.repeat, base_name, cpu)
    target = 0.35 if args.senders == 1 else 0.5
    ratio = ratios["sonoshot (fsync on)"]
    print(f"\n{args.senders} sender(s): sonoshot (fsync on) / {base_name}: {ratio:.2f}x (target >= {target}x): "
          f"{'met' if ratio >= target else 'NOT met'}; pynetdicom bare {ratios['pynetdicom bare']:.2f}x; "
          f"the limits at their defaults / limits off: {ratio / ratios['sonoshot (limits off)']:.2f}x")
    return 0


def while_scoring(args: argparse.Namespace, files: list[Path], megabytes: float, tmp: Path) -> int:
    """Ingest while the worker scores studies, against ingest while idle (same configuration)."""
    sys.path.insert(0, str(REPO))
    from bench.e2e import prepared_cine
    from tests.daemon import fit_demo_bundle

    shared = find_shared()
    if shared is None:
        sys.exit("--while-scoring needs the shared data (BUSI, to fit a detector)")
    bundle = fit_demo_bundle(shared.parent / "busi", tmp / "fit")
    cine_source = Path(get_testdata_file("examples_ybr_color.dcm", download=False))
    cines = tmp / "cines"
    cines.mkdir()
    studies = []
    for n in range(args.scoring_studies):
        path = cines / f"{n}.dcm"
        prepared_cine(cine_source).save_as(path)
        studies.append([path])
    routing = {"rules": [  # the measured instances are received only; the cines are scored
        {"name": "bench-ingest", "action": "ignore", "match": {"calling_ae": "BENCHSCU"}},
        {"name": "ultrasound", "action": "process", "match": {"Modality": "US"}}]}
    variants = {"idle": None, "while scoring": {}, "while scoring, OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"}}
    times: dict[str, list[float]] = {name: [] for name in variants}
    backlog: dict[str, list[int]] = {name: [] for name in variants}
    for rep in range(args.repeat):
        for name, env_extra in variants.items():
            work = Path(tempfile.mkdtemp(dir=tmp, prefix="run-"))
            config = sonoshot_config(work, True, completion={"quiet_period_s": 0.3},
                                     detector={"bundle": str(bundle)}, routing=routing)
            env = {**os.environ, **(env_extra or {})}
            process, port, log = start_sonoshot(config, env)
            try:
                if env_extra is not None:  # the cines arrive, complete and wait for the worker
                    send(port, AET, studies, calling_aet="SCORER")
                    started = time.monotonic()
                    while _states(work).get("processing", 0) == 0:
                        if time.monotonic() - started > 60:
                            sys.exit(f"no study went into processing\n{log.read_text(errors='replace')[-3000:]}")
                        time.sleep(0.05)
                times[name].append(send(port, AET, [files]))
                states = _states(work)
                backlog[name].append(states.get("processing", 0) + states.get("complete", 0))
                if env_extra is not None and backlog[name][-1] == 0:
                    print(f"warning: {name}: every study was scored before the ingest ended; "
                          f"raise --scoring-studies", flush=True)
            finally:
                stop(process)
            if count_stored(work) != len(files) + (len(studies) if env_extra is not None else 0):
                sys.exit(f"sonoshot lost instances\n{log.read_text(errors='replace')[-3000:]}")
            shutil.rmtree(work)
        print(f"repetition {rep + 1}/{args.repeat}: " + ", ".join(
            f"{name} {times[name][-1]:.2f} s ({backlog[name][-1]} studies still to score)" for name in variants),
            flush=True)
    ratios = table(times, len(files), megabytes, args.repeat, "idle")
    for name in list(variants)[1:]:
        print(f"ingest {name} / idle: {ratios[name]:.2f}x (target >= 0.8x): "
              f"{'met' if ratios[name] >= 0.8 else 'NOT met'}")
    return 0


def _states(work: Path) -> dict[str, int]:
    try:
        with sqlite3.connect(work / "var" / "sonoshot.db", timeout=10) as db:
            return dict(db.execute("select state, count(*) from studies group by state").fetchall())
    except sqlite3.OperationalError:  # not created yet
        return {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300, help="instances per run (default 300)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per receiver (default 3)")
    parser.add_argument("--senders", type=int, default=1, help="concurrent storescu associations (default 1)")
    parser.add_argument("--while-scoring", action="store_true", help="sonoshot's ingest while scoring against idle")
    parser.add_argument("--scoring-studies", type=int, default=8, help="30-frame studies to score (default 8)")
    args = parser.parse_args()
    for program in ("storescu", "storescp", "echoscu"):
        if shutil.which(program) is None:
            sys.exit(f"{program} (DCMTK) is required")
    with tempfile.TemporaryDirectory(prefix="sonoshot-bench-") as tmp:
        tmp = Path(tmp)
        srcs = sources()
        (tmp / "send").mkdir()
        files = make_instances(srcs, tmp / "send", args.count)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        print(f"{len(files)} instances, {megabytes:.1f} MB, from {', '.join(p.name for p in srcs)}")
        print(f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}")
        return (while_scoring if args.while_scoring else ingest)(args, files, megabytes, tmp)


if __name__ == "__main__":
    sys.exit(main())
