"""service.py
==========

Wiring, start, reload, drain and stop. The database is the only state the stages share; the
service owns the threads: pynetdicom's server, the APScheduler jobs (completion sweep, one
outbox job per destination, retention), the study workers and the health/metrics server.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import threading
from collections.abc import Callable
from datetime import datetime, timezone

import pydicom
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry
from pynetdicom import _config as pynetdicom_config

from sonoshot.config import Config, load_config
from sonoshot.daemon import http, jobs, retention
from sonoshot.daemon.delivery import DestinationEcho, deliver_due
from sonoshot.daemon.metrics import Metrics
from sonoshot.daemon.watch import DriftCollector, DriftWatch
from sonoshot.daemon.worker import DetectorSlot, StudyWorker
from sonoshot.db.lifecycle import StudyState
from sonoshot.db.store import Store
from sonoshot.dicom_io.deid import DeidKeyError, DeidPolicy, load_key, ocr, patient_pseudonym
from sonoshot.dicom_io.receive import Receiver, start_scp
from sonoshot.dicom_io.spool import Spool
from sonoshot.logs import configure_logging
from sonoshot.model import load_detector
from sonoshot.model.batching import SharedScorer
from sonoshot.model.runtime import apply_threads

log = logging.getLogger(__name__)


def start_console(config: Config, store: Store, spool: Spool, key: bytes):
    """The web console on its own port (``console.*``), served from a background thread."""
    from sonoshot.console.app import ConsoleContext, create_app
    from sonoshot.console.server import ConsoleServer

    return ConsoleServer(config.console, create_app(ConsoleContext(config, store, spool, key))).start()


class Service:
    """The running daemon. ``start()`` returns once it listens; ``stop()`` drains and exits.

    Raises
    ------
    sonoshot.dicom_io.deid.DeidKeyError
        At construction, if the pseudonym key is missing or shorter than 32 bytes.
    """

    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.key = load_key(config.deid.key_file)  # refuse to start without a usable key
        if config.deid.ocr:
            ocr.self_test(config.deid.ocr_min_score)  # the verifier's positive control
        self.store = Store(config.database.url)
        self.spool = Spool(config.storage.spool_dir, config.storage.fsync)
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry, self.store, config.storage.spool_dir,
                               [d.name for d in config.delivery.destinations])
        self.drift = DriftWatch(self.store, lambda: self.config)
        self.registry.register(DriftCollector(self.drift))
        self.scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        self.detectors = DetectorSlot()
        self.server = None
        self.http: http.OpsServer | None = None
        self.console = None
        self.stop_workers = threading.Event()
        self.workers: list[StudyWorker] = []
        self.scorer = SharedScorer(config.workers.batch_wait_s) if config.workers.count > 1 else None
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        # Stored exactly as received: devices write invalid values, which must not stop us reading.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        # pynetdicom's "standard" handlers format every PDU and DIMSE message for its debug log, on
        # the receiving threads; sonoshot logs associations and refusals itself.
        pynetdicom_config.LOG_HANDLER_LEVEL = "none"
        self.store.migrate()
        jobs.recover(self.spool, self.store)
        log.info("torch: %d intra-op threads", apply_threads(self.config.detector.threads))
        self.load_detector()
        config = self.config
        self.scheduler.add_job(jobs.sweep_completion, "interval", args=[self.store, config.completion],
                               seconds=config.completion.sweep_interval_s, id="completion")
        self.schedule_deliveries(config)
        self.scheduler.add_job(retention.purge_expired, "interval", seconds=retention.INTERVAL_S, id="retention",
                               args=[self.store, config.storage.spool_dir, config.storage.work_dir, config.retention])
        echoes = [DestinationEcho(d, config.network.ae_title, config.http.echo_interval_s)
                  for d in config.delivery.destinations]
        for probe in echoes:
            self.scheduler.add_job(probe.probe, "interval", seconds=config.http.echo_interval_s,
                                   id=f"echo-{probe.destination.name}", next_run_time=datetime.now(timezone.utc))
        self.scheduler.add_job(self.drift.run, "interval", seconds=config.validation.drift_interval_s, id="drift",
                               next_run_time=datetime.now(timezone.utc))
        self.scheduler.start()
        for n in range(config.workers.count):
            worker = StudyWorker(config, self.store, self.spool, self.key, self.detectors, self.metrics.observe_stage,
                                 self.scorer)
            thread = threading.Thread(target=_below_the_receiver, args=[worker.run, self.stop_workers],
                                      name=f"worker-{n}", daemon=True)
            thread.start()
            self.workers.append(worker)
            self.threads.append(thread)
        receiver = Receiver(self.spool, self.store, config.storage.min_free_mb,
                            functools.partial(patient_pseudonym, self.key), self.metrics.instance_received,
                            self.metrics.connection_refused)
        self.server = start_scp(config.network, receiver)
        self.metrics.pending_connections.set_function(self.server.gate.pending)
        if config.http.enabled:
            self.http = http.start_http(config.http, {
                "database": http.database_check(self.store),
                "disk": http.disk_check(config.storage.spool_dir, config.storage.min_free_mb),
                "scp": http.scp_check(lambda: self.server),
            }, self.registry, ready={
                "detector": http.detector_check(self.describe_detector),
                "ocr": http.ocr_check(config.deid.ocr),
                **{f"destination:{probe.destination.name}": probe.check for probe in echoes},
            })
        if config.console.enabled:
            self.console = start_console(config, self.store, self.spool, self.key)
        # Start-up objects (torch, the model, the SQLAlchemy metadata) live as long as the process:
        # keep them out of full garbage collections, which would otherwise stop every thread for
        # 0.4 s or more at a time (the receiver's included).
        gc.collect()
        gc.freeze()
        self.store.record_event("service", "started")

    def schedule_deliveries(self, config: Config) -> None:
        """One outbox job per destination, (re)scheduled with ``config``'s delivery mode and settings."""
        for destination in config.delivery.destinations:
            self.scheduler.add_job(
                deliver_due, "interval", seconds=config.delivery.sweep_interval_s, id=f"deliver-{destination.name}",
                args=[destination, self.store, self.spool, config.delivery, config.network.ae_title,
                      self.metrics.delivery_failed], replace_existing=True)

    def describe_detector(self) -> str | None:
        detector = self.detectors.get()
        if detector is None:
            return None
        about = f" ({detector.description})" if detector.description else ""
        return (f"{detector.backbone_name} {detector.precision} "
                f"{(detector.bundle_sha256 or 'zero-shot')[:12]}{about}")

    def load_detector(self) -> None:
        """(Re)load the detector from config; held studies are requeued once one is available."""
        detector = load_detector(self.config.detector)
        self.detectors.set(detector)
        log.info("detector: %s", self.describe_detector() or "none (studies wait as awaiting-detector)")
        if detector is not None:
            requeued = self.store.requeue_awaiting_detector()
            if requeued:
                log.info("%d studies awaiting a detector requeued", requeued)

    def reload(self) -> None:
        """SIGHUP: re-read the config file's routing rules, delivery modes, report settings and detector
        bundle.

        Studies that a changed setting might now decide differently are processed again:
        ``quarantined`` ones when the de-identification settings changed, ``out-of-scope`` ones
        when the detector settings changed (their next result supersedes the "not analysed" one).
        """
        try:
            fresh = load_config(self.config_path) if self.config_path else self.config
            previous, self.config = self.config, fresh
            for worker in self.workers:
                worker.config = fresh
                worker.policy = DeidPolicy.from_config(fresh.deid)
            self.schedule_deliveries(fresh)  # delivery.mode: shadow <-> send without a restart
            self.load_detector()
            requeue = [(StudyState.QUARANTINED, fresh.deid != previous.deid),
                       (StudyState.OUT_OF_SCOPE, fresh.detector != previous.detector)]
            for state, changed in requeue:
                count = self.store.requeue_for_reload(state) if changed else 0
                if count:
                    log.info("%d %s studies requeued after the reload", count, state.value)
            self.store.record_event("service", "reloaded")
        except Exception as exc:  # a bad reload keeps the running configuration
            log.error("reload failed, keeping the running configuration: %s", exc)

    def stop(self) -> None:
        """Drain: stop accepting associations, let those in flight finish, finish the studies in
        hand (a study cut short stays ``processing`` and is requeued at the next start), stop
        the jobs, then close the database. /livez and /readyz answer until the very end."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.stop_workers.set()
        for thread in self.threads:
            thread.join(timeout=120)
        if self.scorer is not None:
            self.scorer.close()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.store.record_event("service", "stopped")
        if self.console is not None:
            self.console.stop()
            self.console = None
        if self.http is not None:
            self.http.stop()
            self.http = None
        self.store.dispose()


#: How much lower than the receiver's threads the study workers run (Linux nice increment): on a
#: small machine de-identification, OCR and the model must not slow the acknowledgement of
#: instances. Threads that a worker starts (torch's, tesseract's process) inherit it.
WORKER_NICE = 10


def _below_the_receiver(run: Callable[[threading.Event], None], stop: threading.Event) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)  # this thread only (Linux)
    except OSError as exc:  # not permitted by a seccomp filter, say: run at the receiver's priority
        log.warning("study workers run at the receiver's priority: %s", exc.strerror)
    run(stop)


def run_service(config: Config, config_path: str | None = None) -> int:
    """Run until SIGTERM or SIGINT (SIGHUP reloads); returns the process exit status."""
    configure_logging(config.logging)
    try:
        service = Service(config, config_path)
    except DeidKeyError as exc:
        log.error("cannot start: %s", exc)
        return 2
    except ocr.OcrUnavailableError as exc:
        log.error("cannot start: %s", exc)
        return 1
    stop_requested = threading.Event()
    reload_requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_requested.set())
    signal.signal(signal.SIGHUP, lambda *_: reload_requested.set())
    try:
        service.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        service.stop()
        return 1
    log.info("sonoshot ready")
    while not stop_requested.wait(0.5):
        if reload_requested.is_set():
            reload_requested.clear()
            service.reload()
    log.info("stopping: draining work in progress")
    service.stop()
    return 0
