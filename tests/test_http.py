"""/livez, /readyz, /healthz and /metrics over real HTTP, on a free port, with a real database,
storage SCP and daemon."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sonoshot.config import Destination, HttpConfig, NetworkConfig
from sonoshot.daemon.delivery import DestinationEcho
from sonoshot.daemon.http import database_check, detector_check, disk_check, scp_check, start_http
from sonoshot.db.lifecycle import StudyState
from sonoshot.daemon.metrics import Metrics
from sonoshot.db.store import Store
from sonoshot.dicom_io.receive import Receiver, start_scp
from sonoshot.dicom_io.spool import Spool
from tests.daemon import Daemon
from tests.ops_rows import drive, new_store, receive, study_uid
from tests.peers import StoreSCP, wait_for
from tests.scenarios import http_get
from tests.util import free_port, require_binary


@pytest.fixture
def store(tmp_path):
    store = new_store(tmp_path)
    yield store
    store.dispose()


@pytest.fixture
def serve():
    """Start an ops server; every one started is stopped after the test."""
    servers = []

    def start(checks, registry=None, **kwargs):
        server = start_http(HttpConfig(bind_address="127.0.0.1", port=free_port()), checks,
                            registry or CollectorRegistry(), **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def get(server, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_healthz_ok_when_every_check_passes(serve, store, tmp_path):
    server = serve({"database": database_check(store), "disk": disk_check(tmp_path, 0),
                    "detector": detector_check(lambda: "bundle ab12")})
    status, content_type, body = get(server, "/healthz")
    assert (status, content_type) == (200, "application/json")
    health = json.loads(body)
    assert health["status"] == "ok" and "failing" not in health
    assert health["checks"]["detector"] == {"ok": True, "detail": "bundle ab12"}
    assert set(health["checks"]) == {"database", "disk", "detector"}


def test_healthz_names_each_failing_check(serve, store, tmp_path):
    broken = Store(f"sqlite:///{tmp_path}")  # a folder, not a database file: cannot be opened

    def explodes() -> tuple[bool, str]:
        raise RuntimeError("probe failed")

    server = serve({"database": database_check(broken), "disk": disk_check(tmp_path, 10**9),
                    "detector": detector_check(lambda: None), "custom": explodes,
                    "fine": database_check(store)})
    status, _, body = get(server, "/healthz")
    health = json.loads(body)
    assert status == 503 and health["status"] == "failing"
    assert health["failing"] == ["custom", "database", "detector", "disk"]
    assert health["checks"]["fine"]["ok"] is True
    assert health["checks"]["custom"]["detail"] == "RuntimeError: probe failed"
    assert "OperationalError" in health["checks"]["database"]["detail"]
    assert "watermark 1000000000 MB" in health["checks"]["disk"]["detail"]
    assert "awaiting-detector" in health["checks"]["detector"]["detail"]
    broken.dispose()


def test_a_check_that_hangs_fails_by_timeout(serve):
    release = threading.Event()

    def hangs() -> tuple[bool, str]:
        release.wait(10)
        return True, "too late"

    server = serve({"slow": hangs}, check_timeout_s=0.2)
    try:
        status, _, body = get(server, "/healthz")
    finally:
        release.set()
    assert status == 503 and json.loads(body)["checks"]["slow"] == {"ok": False, "detail": "no answer within 0.2 s"}


def test_scp_check_follows_the_real_scp(serve, store, tmp_path):
    network = NetworkConfig(port=free_port(), bind_address="127.0.0.1")
    scp = start_scp(network, Receiver(Spool(tmp_path / "spool"), store, min_free_mb=0))
    holder = {"server": scp}
    server = serve({"scp": scp_check(lambda: holder["server"])})
    status, _, body = get(server, "/healthz")
    assert status == 200 and json.loads(body)["checks"]["scp"]["detail"] == f"listening on 127.0.0.1:{network.port}"
    scp.shutdown()
    status, _, body = get(server, "/healthz")
    assert status == 503 and "closed" in json.loads(body)["checks"]["scp"]["detail"]
    holder["server"] = None
    assert "not running" in json.loads(get(server, "/healthz")[2])["checks"]["scp"]["detail"]


def test_metrics_exposition_from_a_dedicated_registry(serve, store, tmp_path):
    registry = CollectorRegistry()
    metrics = Metrics(registry, store, tmp_path, destinations=["pacs"])
    receive(store, study_uid(1), count=3)
    drive(store, study_uid(1), StudyState.REPORTED)  # one pending delivery
    receive(store, study_uid(2), count=1)
    store.open_association("MODALITY", "SONOSHOT", "127.0.0.1")
    metrics.instance_received("stored")
    metrics.instance_received("stored")
    metrics.instance_received("refused")
    metrics.observe_stage("detect", 1.5)
    metrics.delivery_failed("pacs")
    server = serve({}, registry)
    status, content_type, body = get(server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    values = samples(body)
    assert values[("sonoshot_instances_received_total", (("outcome", "stored"),))] == 2
    assert values[("sonoshot_instances_received_total", (("outcome", "duplicate"),))] == 0
    assert values[("sonoshot_studies", (("state", "reported"),))] == 1
    assert values[("sonoshot_studies", (("state", "receiving"),))] == 1
    assert values[("sonoshot_studies", (("state", "delivered"),))] == 0
    assert values[("sonoshot_queue_depth", (("queue", "pending-deliveries"),))] == 1
    assert values[("sonoshot_open_associations", ())] == 1
    assert values[("sonoshot_database_up", ())] == 1
    assert values[("sonoshot_disk_free_bytes", ())] > 0
    assert values[("sonoshot_stage_duration_seconds_count", (("stage", "detect"),))] == 1
    assert values[("sonoshot_stage_duration_seconds_bucket", (("le", "2.5"), ("stage", "detect")))] == 1
    assert values[("sonoshot_delivery_failures_total", (("destination", "pacs"),))] == 1
    assert study_uid(1) not in body and "PSEUDO" not in body and "MODALITY" not in body
    assert prometheus_client.REGISTRY.get_sample_value("sonoshot_database_up") is None


def test_metrics_survive_a_broken_database(serve, tmp_path):
    broken = Store(f"sqlite:///{tmp_path}")
    registry = CollectorRegistry()
    Metrics(registry, broken, tmp_path)
    status, _, body = get(serve({}, registry), "/metrics")
    values = samples(body)
    assert status == 200 and values[("sonoshot_database_up", ())] == 0
    assert not any(name == "sonoshot_studies" for name, _ in values)
    broken.dispose()


def test_metric_labels_are_fixed_vocabularies(store, tmp_path):
    metrics = Metrics(CollectorRegistry(), store, tmp_path, destinations=["pacs"])
    with pytest.raises(ValueError, match="outcome"):
        metrics.instance_received("1.2.3.4")
    with pytest.raises(ValueError, match="stage"):
        metrics.observe_stage("ocr", 1.0)
    with pytest.raises(ValueError, match="seconds"):
        metrics.observe_stage("detect", -1.0)
    with pytest.raises(ValueError, match="destination"):
        metrics.delivery_failed("somewhere-else")


def test_unknown_paths_and_stop(serve):
    server = serve({})
    assert get(server, "/")[0] == 404
    port = server.port
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


# -- liveness and readiness ------------------------------------------------------------------

def test_livez_readyz_and_the_healthz_alias(serve, store, tmp_path):
    server = serve({"database": database_check(store), "disk": disk_check(tmp_path, 0)},
                   ready={"detector": detector_check(lambda: None)})
    for path in ("/livez", "/healthz"):
        status, _, body = get(server, path)
        assert status == 200 and set(json.loads(body)["checks"]) == {"database", "disk"}, path
    status, _, body = get(server, "/readyz")
    health = json.loads(body)
    assert status == 503 and health["failing"] == ["detector"]
    assert set(health["checks"]) == {"database", "disk", "detector"}


def test_a_destination_echo_check_needs_a_recent_answer():
    with pytest.raises(ValueError, match="interval_s"):
        DestinationEcho(Destination(name="pacs", ae_title="PACS", host="127.0.0.1"), "SONOSHOT", 0)
    probe = DestinationEcho(Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=free_port()),
                            "SONOSHOT", 60, timeout_s=2)
    assert probe.check() == (False, "no C-ECHO answered yet")
    probe.probe()  # nothing listens there
    ok, detail = probe.check()
    assert not ok and "s ago" in detail


def _health(daemon: Daemon, path: str) -> tuple[int, dict]:
    status, body = http_get(daemon, path)
    return status, json.loads(body)


def test_a_daemon_without_a_detector_is_live_but_not_ready(tmp_path):
    require_binary("echoscu")
    with Daemon(tmp_path) as daemon:
        for path in ("/livez", "/healthz"):
            status, health = _health(daemon, path)
            assert status == 200 and health["status"] == "ok", health
            assert set(health["checks"]) == {"database", "disk", "scp"}
        status, health = _health(daemon, "/readyz")
        assert status == 503 and health["failing"] == ["detector"], health
        assert health["checks"]["ocr"]["ok"] is True


def test_a_daemon_with_a_detector_and_a_reachable_pacs_is_ready(tmp_path, demo_bundle):
    require_binary("echoscu", "storescp")
    with StoreSCP(tmp_path / "pacs", aet="PACS") as pacs:
        daemon = Daemon(tmp_path / "sonoshot", {
            "detector": {"bundle": str(demo_bundle)}, "http": {"echo_interval_s": 1.0},
            "delivery": {"destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                           "port": pacs.port}]}})
        with daemon:
            wait_for(lambda: _health(daemon, "/readyz")[0] == 200, timeout=30, interval=0.3, what="/readyz 200")
            assert _health(daemon, "/livez")[0] == 200
            assert "C-ECHO status 0x0000" in _health(daemon, "/readyz")[1]["checks"]["destination:pacs"]["detail"]
            pacs.process.terminate()  # the PACS goes down
            pacs.process.wait(timeout=10)
            wait_for(lambda: _health(daemon, "/readyz")[1].get("failing") == ["destination:pacs"], timeout=30,
                     interval=0.3, what="/readyz to name the unreachable PACS")
            assert _health(daemon, "/livez")[0] == 200  # a PACS that is down does not make the node unhealthy
