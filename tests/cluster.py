"""sonoshot in cluster mode for tests and benchmarks: receivers, workers and deliverers as separate
``sonoshot serve --role ...`` processes on one PostgreSQL database and one S3 object store (Swift).

Every process gets its own folder (local spool, work scratch, logs), its own ports and the S3
key of its role. Studies are small (one JPEG ultrasound frame, ``SMALL_US``), de-identification
runs without OCR (the cluster is what is under test, not the verifier) and the detector is the
smallest real one (``fit_demo_bundle``: EfficientNet-Lite0 on 4 + 4 BUSI images).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import create_engine, text

from tests.daemon import Daemon, _merge
from tests.peers import Orthanc
from tests.scenarios import SMALL_US_MASK
from tests.swift import SwiftServer

ROLE_KEYS = {"receiver": "receiver", "worker": "worker", "deliverer": "deliverer", "all": "worker"}
#: Short timeouts so failure cases resolve within a test: stalled after 6 s without a heartbeat.
CLUSTER = {"enabled": True, "stall_timeout_s": 6.0, "heartbeat_interval_s": 1.0, "poll_interval_s": 0.5}


class Cluster:
    """The processes of one sonoshot cluster; ``add`` one, ``start``/``kill`` them by name."""

    def __init__(self, root: Path, database_url: str, swift: SwiftServer, bundle: Path | None,
                 pacs: dict[str, Orthanc], overrides: dict[str, Any] | None = None) -> None:
        self.root = root
        self.database_url = database_url
        self.swift = swift
        self.bundle = bundle
        self.pacs = pacs
        self.overrides = overrides or {}
        self.daemons: dict[str, Daemon] = {}
        self.engine = create_engine(database_url, pool_pre_ping=True)

    def config(self, role: str, folder: Path) -> dict[str, Any]:
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "database": {"url": self.database_url},
            "cluster": CLUSTER,
            "objects": self.swift.objects_config(ROLE_KEYS[role], folder),
            "completion": {"quiet_period_s": 1.0, "sweep_interval_s": 1.0},
            "deid": {"ocr": False, "pixel_masks": [SMALL_US_MASK]},
            "delivery": {"destinations": [{"name": name, "ae_title": pacs.aet, "host": "127.0.0.1",
                                           "port": pacs.dicom_port} for name, pacs in self.pacs.items()],
                         "backoff_initial_s": 0.5, "backoff_max_s": 2.0},
        }
        if self.bundle is not None:
            config["detector"] = {"bundle": str(self.bundle)}
        return _merge(config, self.overrides)

    def add(self, name: str, role: str, queues: tuple[str, ...] = (), nice: int = 0) -> Daemon:
        folder = self.root / name
        daemon = Daemon(folder, self.config(role, folder), role=role, queues=queues, nice=nice)
        self.daemons[name] = daemon
        return daemon

    def __getitem__(self, name: str) -> Daemon:
        return self.daemons[name]

    def start(self, *names: str) -> None:
        """Start the named processes (all by default) side by side; return once each is ready."""
        chosen = [self.daemons[name] for name in names or self.daemons]
        for daemon in chosen:
            daemon.spawn()
        for daemon in chosen:
            daemon.wait_ready(timeout=240)

    def stop(self) -> None:
        for daemon in self.daemons.values():
            if daemon.process is not None:
                daemon.resume()  # a paused process cannot drain
                try:
                    daemon.stop(timeout=60)
                except Exception:
                    daemon.kill()
        self.engine.dispose()

    def query(self, sql: str, **params: Any) -> list[tuple]:
        with self.engine.connect() as c:
            return [tuple(row) for row in c.execute(text(sql), params)]

    def states(self, uids: list[str]) -> dict[str, str]:
        rows = self.query("SELECT study_instance_uid, state FROM studies WHERE study_instance_uid = ANY(:uids)",
                          uids=uids)
        return dict(rows)

    def holder(self, study_uid: str, names: list[str]) -> str | None:
        """Which of the worker processes ``names`` logged starting a stage of the study last."""
        pattern = re.compile(rf"study {re.escape(study_uid)}: (de-identifying|scoring)")
        found = [name for name in names if pattern.search(self.daemons[name].log())]
        return found[-1] if len(found) == 1 else None


def srs_in(pacs: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    """The SR instances a PACS holds for one study (each SOP Instance UID once, as Orthanc stores them)."""
    return [pydicom.dcmread(io.BytesIO(pacs.rest(f"/instances/{i['ID']}/file")))
            for i in pacs.instances_in_study(study_uid) if i.get("Modality") == "SR"]
