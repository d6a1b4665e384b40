"""service.py
==========

Wiring, start, reload, drain and stop of one sonoshot process in one *role*:

| role | runs | needs to reach |
|---|---|---|
| ``all`` | everything below in one process (the embedded default: SQLite, spool, in-process pool) | |
| ``receiver`` | the storage SCP; uploads from its local spool to the object store | PostgreSQL, object store |
| ``worker`` | the ``deid``, ``detect``, ``archive`` and ``archive-detect`` queues (``--queues``), the periodic jobs | PostgreSQL, object store |
| ``deliverer`` | one ``deliver-<destination>`` queue per destination | PostgreSQL, object store, PACS |

The database is the only state the stages share; the service owns the threads: pynetdicom's
server, the uploader, the carrier (:mod:`sonoshot.daemon.stages` in process,
:mod:`sonoshot.daemon.cluster` across processes) and the health/metrics server.
"""

from __future__ import annotations

import functools
import gc
import logging
import signal
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry
from pynetdicom import _config as pynetdicom_config

from sonoshot.config import Config, ConfigError, load_config
from sonoshot.daemon import ROLES, http, jobs, retention
from sonoshot.daemon.ahead import AHEAD_FOLDER, DeidAhead
from sonoshot.daemon.delivery import DeliverStage, DestinationEcho
from sonoshot.daemon.isolation import DeidHelpers
from sonoshot.daemon.metrics import Metrics
from sonoshot.daemon.stages import WORKER_NICE, Carrier, InProcessCarrier, Periodic, Stage
from sonoshot.daemon.uploader import Uploader
from sonoshot.daemon.watch import DriftCollector, DriftWatch
from sonoshot.daemon.worker import DeidStage, DetectorSlot, DetectStage
from sonoshot.db.lifecycle import StudyState
from sonoshot.db.store import Store
from sonoshot.db.work import ARCHIVE_DETECT_QUEUE, ARCHIVE_QUEUE, WakeDeferrer, delivery_queue
from sonoshot.dicom_io import read_as_received
from sonoshot.dicom_io.deid import DeidKeyError, DeidPolicy, load_key, ocr, patient_pseudonym
from sonoshot.dicom_io.receive import Receiver, start_scp
from sonoshot.dicom_io.report import load_standard_tables
from sonoshot.dicom_io.spool import Spool
from sonoshot.logs import configure_logging
from sonoshot.model import load_detector
from sonoshot.model.batching import SharedScorer
from sonoshot.model.runtime import apply_threads
from sonoshot.objects import Kind, ObjectStore, open_object_store
from sonoshot.objects.folder import FolderStore

log = logging.getLogger(__name__)

#: The queues a worker takes by default.
WORKER_QUEUES = ("deid", "detect", ARCHIVE_QUEUE, ARCHIVE_DETECT_QUEUE)


@dataclass(frozen=True)
class Plan:
    """What one process runs: the SCP or not, and which stage queues."""

    receiver: bool
    queues: tuple[str, ...]
    deliver: bool = False  # all in one process, or a deliverer: destinations follow the configuration

    @property
    def deid(self) -> bool:
        return "deid" in self.queues or ARCHIVE_QUEUE in self.queues

    @property
    def detect(self) -> bool:
        return "detect" in self.queues or ARCHIVE_DETECT_QUEUE in self.queues

    def destinations(self, config: Config) -> list[str]:
        return [d.name for d in config.delivery.destinations if delivery_queue(d.name) in self.queues]


def plan(config: Config, role: str, queues: tuple[str, ...] = ()) -> Plan:
    """The :class:`Plan` for ``role`` (and ``--queues``) under ``config``.

    Raises
    ------
    ConfigError
        Naming ``--role`` or ``--queues`` when the role needs cluster mode or a queue is unknown.
    """
    if role not in ROLES:
        raise ConfigError("--role", f"expected one of {', '.join(ROLES)}, got {role!r}")
    every_queue = (*WORKER_QUEUES, *(delivery_queue(d.name) for d in config.delivery.destinations))
    if role != "all" and not config.cluster.enabled:
        raise ConfigError("--role", f"role '{role}' needs cluster mode ([cluster] enabled = true)")
    if queues and role not in ("worker", "deliverer"):
        raise ConfigError("--queues", "only a worker or a deliverer takes --queues")
    for queue in queues:
        if queue not in every_queue:
            raise ConfigError("--queues", f"unknown queue {queue!r}; expected some of {', '.join(every_queue)}")
    if role == "receiver":
        return Plan(True, ())
    if role == "worker":
        return Plan(False, queues or WORKER_QUEUES)
    if role == "deliverer":
        return Plan(False, queues or every_queue[len(WORKER_QUEUES):], deliver=True)
    return Plan(True, every_queue, deliver=True)


def node_name(config: Config) -> str:
    """This process's name in the database (associations, pending uploads)."""
    return config.cluster.node_name or f"{socket.gethostname()}:{config.network.port}"


def start_console(config: Config, store: Store, spool: Spool, key: bytes, objects: ObjectStore):
    """The web console on its own port (``console.*``), served from a background thread."""
    from sonoshot.console.app import ConsoleContext, create_app
    from sonoshot.console.server import ConsoleServer

    return ConsoleServer(config.console, create_app(ConsoleContext(config, store, spool, key, objects))).start()


class Service:
    """The running daemon. ``start()`` returns once it listens; ``stop()`` drains and exits.

    Raises
    ------
    sonoshot.config.ConfigError
        At construction, for a role or queue the configuration does not allow.
    sonoshot.dicom_io.deid.DeidKeyError
        At construction, if the pseudonym key is missing or shorter than 32 bytes.
    """

    def __init__(self, config: Config, config_path: str | None = None, role: str = "all",
                 queues: tuple[str, ...] = ()) -> None:
        self.config = config
        self.config_path = config_path
        self.plan = plan(config, role, queues)
        self.cluster = config.cluster.enabled
        self.node = node_name(config)
        needs_key = self.plan.receiver or self.plan.deid
        self.key = load_key(config.deid.key_file) if needs_key else b""  # refuse to start without a usable key
        if config.deid.ocr and self.plan.deid:
            ocr.self_test(config.deid.ocr_min_score)  # the verifier's positive control
        if self.cluster:
            from sonoshot.db.cluster import ProcrastinateDeferrer

            self.deferrer = ProcrastinateDeferrer()
        else:
            self.deferrer = WakeDeferrer()
        # a connection for each association the receiver admits, each worker and the periodic jobs
        self.store = Store(config.database.url, self.deferrer,
                           connections=config.network.max_associations + config.workers.count + 4)
        self.objects = open_object_store(config)
        self.spool = Spool(config.storage.spool_dir, config.storage.fsync)
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry, self.store, config.storage.spool_dir,
                               [d.name for d in config.delivery.destinations])
        self.drift = DriftWatch(self.store, lambda: self.config)
        self.registry.register(DriftCollector(self.drift))
        self.detectors = DetectorSlot()
        # one scoring thread shared by the workers, so their studies share the backbone's batches
        self.scorer = SharedScorer(config.workers.batch_wait_s) if config.workers.count > 1 and self.plan.detect \
            else None
        # de-identification in helper processes: off the receiver's interpreter lock, and a decoder
        # that crashes takes down its helper only (see sonoshot.daemon.isolation)
        self.deid_helpers = DeidHelpers(config.workers.count, WORKER_NICE if self.plan.receiver else 0,
                                        DeidPolicy.from_config(config.deid).text_threads) if self.plan.deid else None
        self.stages = self._stages()
        self.ahead = self._ahead()
        self.carrier: Carrier | None = None
        self.probes = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        self.uploader = Uploader(self.store, self.spool, self.objects, self.node, config.objects.upload_retry_max_s) \
            if self.cluster and self.plan.receiver else None
        self.server = None
        self.http: http.OpsServer | None = None
        self.console = None
        self.threads: list[threading.Thread] = []
        self.stopping = threading.Event()

    def _stages(self) -> dict[str, Stage]:
        config = self.config
        stages: dict[str, Stage] = {}
        if self.plan.deid:
            assert self.deid_helpers is not None
            stages["deid"] = DeidStage(config, self.store, self.objects, self.key, self.detectors,
                                       self.deid_helpers.deidentify)
        if self.plan.detect:
            stages["detect"] = DetectStage(config, self.store, self.objects, self.detectors,
                                           self.metrics.observe_stage, self.scorer)
        if self.plan.deliver:
            stages["deliver"] = DeliverStage(config, self.store, self.objects, self.metrics.delivery_failed)
        return stages

    def _ahead(self) -> DeidAhead | None:
        """De-identification during the quiet period, where the receiver and the stage share this
        process and the spool is the originals store (see sonoshot.daemon.ahead)."""
        stage = self.stages.get("deid")
        if not (self.config.deid.ahead and self.plan.receiver and isinstance(stage, DeidStage)) or self.cluster:
            return None
        if not isinstance(self.objects, FolderStore) or \
                self.objects.roots[Kind.ORIGINALS].resolve() != self.spool.root.resolve():
            return None
        stage.ahead = DeidAhead(self.spool.root, Path(self.config.storage.work_dir) / AHEAD_FOLDER, stage.plan_ahead,
                                self.key, self._pool_busy, WORKER_NICE, stage.deidentify)
        return stage.ahead

    def _pool_busy(self) -> bool:
        return isinstance(self.carrier, InProcessCarrier) and self.carrier.busy()

    def _periodic(self) -> list[Periodic]:
        config = self.config
        return [
            Periodic("completion", config.completion.sweep_interval_s,
                     functools.partial(jobs.sweep_completion, self.store, config.completion),
                     next_due=functools.partial(self.store.next_completion_at, config.completion.quiet_period_s,
                                                config.completion.max_wait_s)),
            Periodic("retention", retention.INTERVAL_S,
                     functools.partial(retention.purge_expired, self.store, self.objects, config.retention)),
            Periodic("drift", config.validation.drift_interval_s, self.drift.run, at_start=True),
        ]

    def start(self) -> None:
        read_as_received()
        # pynetdicom's "standard" handlers format every PDU and DIMSE message for its debug log, on
        # the receiving threads; sonoshot logs associations and refusals itself.
        pynetdicom_config.LOG_HANDLER_LEVEL = "none"
        self.store.migrate()
        if self.cluster:
            from sonoshot.db.cluster import apply_schema

            if apply_schema(self.store.engine):
                log.info("procrastinate's schema created")
        config = self.config
        if self.plan.receiver:
            if self.uploader is not None:
                jobs.recover_receiver(self.spool, self.store, self.node)
                self.uploader.drop_uploaded_leftovers()
            else:
                jobs.recover(self.spool, self.store)
        if self.plan.deid or self.plan.detect:  # de-identification checks each instance against its scope
            log.info("torch: %d intra-op threads", apply_threads(config.detector.threads))
            self.load_detector()
        if self.plan.detect:
            load_standard_tables()  # before the receiver starts and before gc.freeze()
        if self.deid_helpers is not None:
            self.deid_helpers.start()
        self._start_carrier()
        echoes = [DestinationEcho(d, config.network.ae_title, config.http.echo_interval_s)
                  for d in config.delivery.destinations if d.name in self.plan.destinations(config)]
        for probe in echoes:  # each process probes what it sends to, for its own /readyz
            self.probes.add_job(probe.probe, "interval", seconds=config.http.echo_interval_s,
                                id=f"echo-{probe.destination.name}", next_run_time=datetime.now(timezone.utc))
        self.probes.start()
        if self.ahead is not None:
            self.ahead.start()
        if self.uploader is not None:
            thread = threading.Thread(target=self.uploader.run, args=[self.stopping], name="uploader", daemon=True)
            thread.start()
            self.threads.append(thread)
        if self.plan.receiver:
            receiver = Receiver(self.spool, self.store, config.storage.min_free_mb,
                                functools.partial(patient_pseudonym, self.key), self.metrics.instance_received,
                                count_refusal=self.metrics.connection_refused,
                                node=self.node if self.cluster else None,
                                on_stored=self.uploader.stored if self.uploader else
                                self.ahead.stored if self.ahead else None)
            self.server = start_scp(config.network, receiver)
            self.metrics.pending_connections.set_function(self.server.gate.pending)
        if config.http.enabled:
            live, ready = self._checks(echoes)
            self.http = http.start_http(config.http, live, self.registry, ready=ready)
        if config.console.enabled and self.plan.receiver and not self.cluster:
            self.console = start_console(config, self.store, self.spool, self.key, self.objects)
        # Start-up objects (torch, the model, the SQLAlchemy metadata) live as long as the process:
        # keep them out of full garbage collections, which would otherwise stop every thread for
        # 0.4 s or more at a time (the receiver's included).
        gc.collect()
        gc.freeze()
        self.store.record_event("service", "started", detail={"role": self.role_text, "node": self.node})

    def _start_carrier(self) -> None:
        if not self.plan.queues:  # a cluster receiver: the workers run the periodic jobs
            return
        config = self.config
        if self.cluster:
            from sonoshot.daemon.cluster import ProcrastinateCarrier

            stage_queues = [q for q in self.plan.queues if not q.startswith("deliver-")]
            groups = [stage_queues, *([q] for q in self.plan.queues if q.startswith("deliver-"))]
            periodic = self._periodic() if self.plan.deid or self.plan.detect else []  # workers only
            self.carrier = ProcrastinateCarrier(config.database.url, config.cluster, self.store, self.stages,
                                                periodic, groups, config.workers.count, self.node)
        else:
            assert isinstance(self.deferrer, WakeDeferrer)
            self.carrier = InProcessCarrier(self.store, self.deferrer, self.stages, self._periodic(),
                                            config.workers.count, self.plan.destinations(config),
                                            config.delivery.sweep_interval_s,
                                            nice=WORKER_NICE if self.plan.receiver else 0)
        self.carrier.start()

    def _checks(self, echoes: list[DestinationEcho]) -> tuple[dict[str, http.Check], dict[str, http.Check]]:
        """What /livez checks (the process can do its work at all) and what /readyz adds (what its
        work needs: the detector, OCR, the destinations it sends to)."""
        config = self.config
        live = {"database": http.database_check(self.store)}
        if self.plan.receiver:
            live["disk"] = http.disk_check(config.storage.spool_dir, config.storage.min_free_mb)
            live["scp"] = http.scp_check(lambda: self.server)
        if self.cluster:
            live["objects"] = http.objects_check(self.objects)
        ready: dict[str, http.Check] = {}
        if self.plan.detect:
            ready["detector"] = http.detector_check(self.describe_detector)
        if self.plan.deid:
            ready["ocr"] = http.ocr_check(config.deid.ocr)
        ready |= {f"destination:{probe.destination.name}": probe.check for probe in echoes}
        return live, ready

    @property
    def role_text(self) -> str:
        """What this process runs, for logs and the audit: ``receiver deid,detect,...``."""
        return " ".join(filter(None, ("receiver" if self.plan.receiver else "", ",".join(self.plan.queues))))

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
        """SIGHUP: re-read the config file's routing rules, de-identification, delivery modes, report
        settings and detector bundle.

        Studies that a changed setting might now decide differently are processed again:
        ``quarantined`` ones when the de-identification settings changed, ``out-of-scope`` ones
        when the detector settings changed (their next result supersedes the "not analysed" one).
        """
        try:
            fresh = load_config(self.config_path) if self.config_path else self.config
            previous, self.config = self.config, fresh
            for stage in self.stages.values():
                if hasattr(stage, "config"):  # routing, de-identification, report and delivery settings
                    stage.config = fresh
            if isinstance(self.carrier, InProcessCarrier):
                self.carrier.sweep_destinations(self.plan.destinations(fresh))
            if self.plan.deid or self.plan.detect:
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
        hand (a study cut short is taken up again: at the next start, or by another worker),
        stop the uploader and the jobs, then close the database. /livez and /readyz answer until
        the very end."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.stopping.set()
        if self.uploader is not None:
            self.uploader.wakeup.set()
        for thread in self.threads:
            thread.join(timeout=120)
        if self.carrier is not None:
            self.carrier.stop()
        if self.ahead is not None:  # after the carrier: the studies in hand may take outcomes from it
            self.ahead.stop()
        if self.deid_helpers is not None:
            self.deid_helpers.close()
        if self.scorer is not None:
            self.scorer.close()
        if self.probes.running:
            self.probes.shutdown(wait=True)
        self.store.record_event("service", "stopped", detail={"node": self.node})
        if self.console is not None:
            self.console.stop()
            self.console = None
        if self.http is not None:
            self.http.stop()
            self.http = None
        self.store.dispose()


def run_service(config: Config, config_path: str | None = None, role: str = "all",
                queues: tuple[str, ...] = ()) -> int:
    """Run until SIGTERM or SIGINT (SIGHUP reloads); returns the process exit status."""
    configure_logging(config.logging)
    try:
        service = Service(config, config_path, role, queues)
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
    log.info("sonoshot ready (%s)", service.role_text)
    while not stop_requested.wait(0.5):
        if reload_requested.is_set():
            reload_requested.clear()
            service.reload()
    log.info("stopping: draining work in progress")
    service.stop()
    return 0
