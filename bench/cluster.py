"""Cluster mode against the in-process mode on the same machine: throughput, the queue's own cost per
study, and an archive import that must not slow live studies down.

Everything is real and on 127.0.0.1: PostgreSQL 15, OpenStack Swift (S3), ``sonoshot serve``
processes in their roles, DCMTK ``storescu``. Studies are one JPEG ultrasound frame each (the
shared ``orthanc-1.2.840.10008.1.2.4.50.dcm`` with fresh UIDs), de-identified without OCR and
scored by a detector fitted here (EfficientNet-Lite0 on 4 + 4 BUSI images); results stay in the
database (no PACS), so the figures are receive → reported.

1. Throughput: ``--studies`` studies sent at once; studies per second from the last
   acknowledgement to the last result, for the in-process mode (one process, SQLite, one worker
   thread), then cluster mode with one and with two worker processes (one receiver).
2. Queue overhead: studies sent one at a time; per study, the time from completion to its result
   minus the time its stages worked (de-identify + detect + report, as recorded), median: what
   carrying the work costs (claims, deferrals, fetches, object store transfers).
3. Archive: ``--archive`` synthetic studies imported with ``sonoshot import folder`` into the
   cluster, worked by an archive worker (``--queues archive,archive-detect``, ``nice 19``) beside
   the live one (``deid,detect``); live studies sent one every ``--live-every`` seconds while
   the backlog is worked, alternately with the archive worker running and paused (SIGSTOP, well
   inside the stall timeout), so both halves see the same background load. Live latency (last
   acknowledgement → result), median of each half.

    .venv/bin/python bench/cluster.py [--studies 30] [--overhead 8] [--archive 1000] [--live 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.cluster import Cluster  # noqa: E402  (the same launchers the tests use)
from tests.conftest import find_shared  # noqa: E402
from tests.daemon import Daemon, fit_demo_bundle  # noqa: E402
from tests.peers import DCMTK_ENV, wait_for  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402
from tests.scenarios import SMALL_US, SMALL_US_MASK, make_study, storescu_args  # noqa: E402
from tests.swift import start_swift  # noqa: E402

EMBEDDED = {"completion": {"quiet_period_s": 1.0, "sweep_interval_s": 0.2},
            "deid": {"ocr": False, "pixel_masks": [SMALL_US_MASK]}}


class Studies:
    """Fresh one-instance studies in a folder."""

    def __init__(self, source: Path, root: Path) -> None:
        self.source, self.root, self.n = source, root, 0

    def make(self, count: int) -> list[tuple[str, Path]]:
        made = []
        for _ in range(count):
            self.n += 1
            uid, files = make_study(self.source, self.root / f"s{self.n}")
            made.append((uid, next(iter(files))))
        return made


def send(port: int, files: list[Path]) -> float:
    """storescu all files in one association; returns the time of the last acknowledgement."""
    result = subprocess.run(storescu_args(port, files), env=DCMTK_ENV, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr[-500:]}")
    return time.time()


class Site:
    """Where the results land: the query for results of given studies, in either mode."""

    def __init__(self, query) -> None:
        self.query = query  # (sql with ? or :uids) -> rows

    def reported(self, uids: list[str]) -> dict[str, tuple[float, float, dict]]:
        """study -> (completed_at, result created_at, timings) as epoch seconds."""
        rows = self.query(uids)
        return {uid: (completed, created, timings) for uid, completed, created, timings in rows}


def _epoch(value: str | datetime) -> float:
    """A stored UTC time (SQLite: ISO text; PostgreSQL: a naive datetime) as epoch seconds."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=timezone.utc).timestamp()


def sqlite_site(daemon: Daemon) -> Site:
    def query(uids):
        marks = ",".join("?" * len(uids))
        rows = daemon.query(f"SELECT s.study_instance_uid, s.completed_at, r.created_at, r.timings FROM studies s "
                            f"JOIN results r ON r.study_id = s.id WHERE s.study_instance_uid IN ({marks})", *uids)
        return [(u, _epoch(c), _epoch(r), json.loads(t)) for u, c, r, t in rows]
    return Site(query)


def cluster_site(cluster: Cluster) -> Site:
    def query(uids):
        rows = cluster.query("SELECT s.study_instance_uid, s.completed_at, r.created_at, r.timings FROM studies s "
                             "JOIN results r ON r.study_id = s.id WHERE s.study_instance_uid = ANY(:uids)", uids=uids)
        return [(u, _epoch(c), _epoch(r), t if isinstance(t, dict) else json.loads(t)) for u, c, r, t in rows]
    return Site(query)


def throughput(site: Site, port: int, studies: Studies, count: int) -> float:
    batch = studies.make(count)
    uids = [uid for uid, _f in batch]
    acked = send(port, [f for _u, f in batch])
    wait_for(lambda: len(site.reported(uids)) == len(uids), timeout=3600, interval=0.5, what="the batch reported")
    last = max(created for _c, created, _t in site.reported(uids).values())
    return count / (last - acked)


def overhead(site: Site, port: int, studies: Studies, count: int) -> tuple[float, float]:
    """Median (latency from completion to result, latency minus stage work) of studies sent one by one."""
    latencies, carried = [], []
    for uid, path in studies.make(count):
        send(port, [path])
        wait_for(lambda: site.reported([uid]), timeout=600, interval=0.05, what="the study reported")
        completed, created, timings = site.reported([uid])[uid]
        work = sum(timings.get(k, 0.0) for k in ("deidentify", "detect", "report"))
        latencies.append(created - completed)
        carried.append(created - completed - work)
    return statistics.median(latencies), statistics.median(carried)


def live_latency(site: Site, port: int, studies: Studies, count: int, every_s: float,
                 archive: Daemon) -> tuple[list[float], list[float]]:
    """Last acknowledgement → result of ``count`` live studies with the archive worker paused and
    of ``count`` with it running, sent alternately ``every_s`` apart."""
    paused: list[float] = []
    running: list[float] = []
    for n, (uid, path) in enumerate(studies.make(2 * count)):
        started = time.time()
        if n % 2 == 0:
            archive.pause()
        acked = send(port, [path])
        wait_for(lambda: site.reported([uid]), timeout=600, interval=0.05, what="the live study reported")
        if n % 2 == 0:
            archive.resume()
        (paused if n % 2 == 0 else running).append(site.reported([uid])[uid][1] - acked)
        time.sleep(max(0.0, every_s - (time.time() - started)))
    return paused, running


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=30, help="studies per throughput batch")
    parser.add_argument("--overhead", type=int, default=8, help="studies sent one by one per mode")
    parser.add_argument("--archive", type=int, default=1000, help="synthetic studies in the archive import")
    parser.add_argument("--live", type=int, default=8, help="live studies with the archive worker paused, and as many running")
    parser.add_argument("--live-every", type=float, default=4.0, help="seconds between live studies")
    args = parser.parse_args()
    shared = find_shared()
    if shared is None:
        sys.exit("shared data not found: set SONOSHOT_SHARED")
    root = Path(tempfile.mkdtemp(prefix="sonoshot-bench-cluster-"))
    pg_root = Path(tempfile.mkdtemp(prefix="sonoshot-pg-"))
    studies = Studies(shared / "data" / "dicom" / SMALL_US, root / "studies")
    bundle = fit_demo_bundle(shared / "data" / "busi", root / "fit")
    rows: dict[str, dict[str, float]] = {}
    embedded = Daemon(root / "embedded", {**EMBEDDED, "detector": {"bundle": str(bundle)}})
    with embedded:
        site = sqlite_site(embedded)
        overhead(site, embedded.port, studies, 1)  # warm-up
        rows["in-process"] = {"studies/s": throughput(site, embedded.port, studies, args.studies)}
        rows["in-process"]["latency"], rows["in-process"]["overhead"] = overhead(site, embedded.port, studies,
                                                                                 args.overhead)
    pg = PostgresServer(pg_root, max_connections=200)
    pg.start()
    swift = start_swift(root / "swift")
    cluster = Cluster(root / "cluster", pg.url, swift, bundle, {},  # pauses of the archive worker stay short of it:
                      {"completion": {"quiet_period_s": 1.0, "sweep_interval_s": 1.0},
                       "cluster": {"stall_timeout_s": 60.0}})
    live_alone: list[float] = []  # the archive worker paused
    live_with_archive: list[float] = []
    archive_done = 0
    import_s = 0.0
    try:
        cluster.add("rx", "receiver")
        cluster.add("w1", "worker", ("deid", "detect"))
        cluster.add("w2", "worker", ("deid", "detect"))
        cluster.add("archive", "worker", ("archive", "archive-detect"), nice=19)
        cluster.start("rx", "w1")
        site = cluster_site(cluster)
        port = cluster["rx"].port
        overhead(site, port, studies, 1)  # warm-up
        rows["cluster, 1 worker"] = {"studies/s": throughput(site, port, studies, args.studies)}
        rows["cluster, 1 worker"]["latency"], rows["cluster, 1 worker"]["overhead"] = overhead(
            site, port, studies, args.overhead)
        cluster.start("w2")
        rows["cluster, 2 workers"] = {"studies/s": throughput(site, port, studies, args.studies)}
        cluster["w2"].stop()
        cluster.start("archive")
        archive = root / "archive"
        for uid, path in studies.make(args.archive):
            (archive / uid).mkdir(parents=True)
            shutil.move(path, archive / uid / path.name)
        started = time.time()
        imported = subprocess.run([sys.executable, "-m", "sonoshot", "--config",
                                   str(cluster["archive"].config_path), "import", "folder", str(archive)],
                                  capture_output=True, text=True, timeout=3600, cwd=cluster["archive"].workdir)
        import_s = time.time() - started
        if imported.returncode != 0:
            raise RuntimeError(f"import failed: {imported.stderr[-1000:]}")
        live_alone, live_with_archive = live_latency(site, port, studies, args.live, args.live_every,
                                                     cluster["archive"])
        archive_done = cluster.query("SELECT count(*) FROM studies WHERE lane = 'archive' AND state = 'reported'")[0][0]
    finally:
        cluster.stop()
        swift.stop()
        pg.stop()
        shutil.rmtree(pg_root, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    base = rows["in-process"]["studies/s"]
    print(f"one-frame JPEG ultrasound studies, OCR off, {args.studies} studies per batch, medians of "
          f"{args.overhead} single studies")
    print(f"{'mode':<20}{'studies/s':>11}{'x in-proc':>11}{'latency s':>11}{'overhead s':>12}")
    for mode, row in rows.items():
        single = f"{row['latency']:>11.2f}{row['overhead']:>12.2f}" if "latency" in row else f"{'-':>11}{'-':>12}"
        print(f"{mode:<20}{row['studies/s']:>11.2f}{row['studies/s'] / base:>11.2f}{single}")
    print(f"archive: {args.archive} studies imported (queued) in {import_s:.1f} s "
          f"({args.archive / import_s:.1f} studies/s); {archive_done} of them processed by the end")
    alone, busy = statistics.median(live_alone), statistics.median(live_with_archive)
    print(f"live latency, ack -> result, median of {args.live} each: archive worker paused {alone:.2f} s, "
          f"working the backlog {busy:.2f} s ({busy / alone:.2f}x); max {max(live_alone):.2f} / "
          f"{max(live_with_archive):.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
