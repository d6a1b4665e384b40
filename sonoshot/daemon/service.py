"""service.py
==========

Wiring, start, drain and stop. The database is the only state the stages share; the service
owns the threads: pynetdicom's server, the APScheduler jobs, and (later stages) the workers.
"""

from __future__ import annotations

import logging
import signal
import threading

import pydicom
from apscheduler.schedulers.background import BackgroundScheduler

from sonoshot.config import Config
from sonoshot.daemon import jobs
from sonoshot.db.store import Store
from sonoshot.dicom_io.receive import start_scp
from sonoshot.dicom_io.spool import Spool
from sonoshot.logs import configure_logging

log = logging.getLogger(__name__)


class Service:
    """The running daemon. ``start()`` returns once it listens; ``stop()`` drains and exits."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(config.database.url)
        self.spool = Spool(config.storage.spool_dir, config.storage.fsync)
        self.scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        self.server = None
        self.stopped = threading.Event()

    def start(self) -> None:
        # Stored exactly as received: devices write invalid values, which must not stop us reading.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        self.store.migrate()
        jobs.recover(self.spool, self.store)
        self.scheduler.add_job(jobs.sweep_completion, "interval", args=[self.store, self.config.completion],
                               seconds=self.config.completion.sweep_interval_s, id="completion")
        self.scheduler.start()
        self.server, _receiver = start_scp(self.config.network, self.config.storage, self.store)
        self.store.record_event("service", "started")

    def stop(self) -> None:
        """Stop accepting associations, let those in flight finish, stop jobs, close the database."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.store.record_event("service", "stopped")
        self.store.dispose()
        self.stopped.set()


def run_service(config: Config) -> int:
    """Run until SIGTERM or SIGINT; returns the process exit status."""
    configure_logging(config.logging)
    service = Service(config)
    stop_requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_requested.set())
    try:
        service.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        service.stop()
        return 1
    log.info("sonoshot ready")
    stop_requested.wait()
    log.info("stopping: draining work in progress")
    service.stop()
    return 0
