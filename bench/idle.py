"""Idle cost: the CPU a receiver spends on connections that send nothing.

Holds ``--connections`` associations (and, separately, as many connections that never send an
A-ASSOCIATE-RQ) open and idle for ``--seconds`` against a stock pynetdicom SCP (the bare receiver
of bench/ingest.py, whose DUL and reactor poll every 1 ms) and against ``sonoshot serve`` (event
driven, see sonoshot/dicom_io/upper_layer.py), in the same run, and prints the receiver's CPU time
(user + system, from /proc) per idle connection-second, over what it spends with no connection
(measured just before each).

    .venv/bin/python bench/idle.py [--connections 10] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.ingest import (AET, BARE_SCP, free_port, sonoshot_config, start_sonoshot, stop,  # noqa: E402
                          wait_listening)
from tests.rawpeer import A_ASSOCIATE_AC, RawPeer, associate_rq  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def spent(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


def idle_cost(pid: int, port: int, called: str, connections: int, seconds: float, associate: bool) -> float:
    """CPU seconds the receiver spent per connection-second with ``connections`` idle connections,
    over what it spends with none (measured just before)."""
    baseline = spent(pid, seconds)
    peers = [RawPeer(port, f"127.0.{40 + n // 200}.{1 + n % 200}") for n in range(connections)]
    try:
        if associate:
            for peer in peers:
                if peer.associate(associate_rq(called=called))[0] != A_ASSOCIATE_AC:
                    sys.exit(f"{called} refused an association")
        time.sleep(0.5)
        busy = spent(pid, seconds)
    finally:
        for peer in peers:
            peer.close()
    return max(0.0, busy - baseline) / (connections * seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sonoshot-idle-") as tmp:
        work = Path(tmp)
        port = free_port()
        (work / "bare").mkdir()
        bare = subprocess.Popen([sys.executable, "-c", BARE_SCP, str(port), str(work / "bare")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(bare, port, "BARE", "the bare pynetdicom SCP")
            for associate in (True, False):
                rows.append(("pynetdicom 3.0.4 (stock)", associate,
                             idle_cost(bare.pid, port, "BARE", args.connections, args.seconds, associate)))
        finally:
            stop(bare)
        (work / "sonoshot").mkdir()
        # Pending connections are closed after request_timeout_s: give them the whole measurement.
        process, port, _log = start_sonoshot(sonoshot_config(
            work / "sonoshot", True, {"request_timeout_s": args.seconds + 5, "max_associations": args.connections + 2,
                                      "max_pending_per_address": args.connections}))
        try:
            for associate in (True, False):
                rows.append(("sonoshot", associate,
                             idle_cost(process.pid, port, AET, args.connections, args.seconds, associate)))
        finally:
            stop(process)
    print(f"{args.connections} idle connections for {args.seconds:g} s, {os.cpu_count()} cores")
    print(f"{'receiver':28} {'connections':>16} {'CPU ms per connection-second':>30} {'% of a core each':>17}")
    for name, associate, cost in rows:
        kind = "associated" if associate else "not associated"
        print(f"{name:28} {kind:>16} {cost * 1000:30.2f} {cost * 100:17.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
