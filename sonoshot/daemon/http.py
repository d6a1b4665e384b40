"""http.py
=======

The operations endpoint on ``http.bind_address:http.port`` (local by default), served by a
standard-library :class:`~http.server.ThreadingHTTPServer` in a background thread:

``GET /livez``
    Liveness: sonoshot can safely accept instances (the process is up, the storage SCP
    listens, the database answers, the spool's disk is above the watermark). ``200 {"status":
    "ok", "checks": {...}}`` when every liveness check passes, else ``503`` with ``"status":
    "failing"`` and the failing checks named in ``"failing"``. What a supervisor restarts on.
``GET /readyz``
    Readiness: the liveness checks and those that say results will flow (a detector loaded,
    the OCR control passed, each destination answered a recent C-ECHO); same answers.
``GET /healthz``
    An alias of ``/livez``.
``GET /metrics``
    The Prometheus exposition of one dedicated registry (see :mod:`sonoshot.daemon.metrics`).

Each check is a callable returning ``(ok, detail)``; one that raises or takes longer than
``check_timeout_s`` fails. Nothing here reads patient data: details name folders, sizes, states
and configured destination names only.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, TimeoutError
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from sonoshot.config import HttpConfig
from sonoshot.db import queries
from sonoshot.db.store import Store

log = logging.getLogger(__name__)

#: A health check: returns whether the component is usable and a short, PHI-free detail.
Check = Callable[[], tuple[bool, str]]
#: Seconds a check may take before it counts as failed (a locked database, a hung mount).
CHECK_TIMEOUT_S = 5.0


def database_check(store: Store) -> Check:
    """Passes when the state database answers ``SELECT 1``."""
    def check() -> tuple[bool, str]:
        queries.ping(store)
        return True, "SELECT 1 answered"
    return check


def disk_check(spool_root: Path, min_free_mb: int) -> Check:
    """Passes while the spool's file system has at least ``min_free_mb`` free (the C-STORE watermark)."""
    def check() -> tuple[bool, str]:
        free_mb = shutil.disk_usage(spool_root).free / 2**20
        return free_mb >= min_free_mb, f"{free_mb:.0f} MB free in {spool_root}, watermark {min_free_mb} MB"
    return check


def scp_check(get_server: Callable[[], socketserver.BaseServer | None]) -> Check:
    """Passes while the storage SCP's server exists and its listening socket is open."""
    def check() -> tuple[bool, str]:
        server = get_server()
        if server is None:
            return False, "the storage SCP is not running"
        if server.socket.fileno() < 0:
            return False, "the storage SCP's socket is closed"
        host, port = server.server_address[:2]
        return True, f"listening on {host}:{port}"
    return check


def detector_check(describe_detector: Callable[[], str | None]) -> Check:
    """Passes when the service has a detector loaded.

    ``describe_detector`` returns a short description of the loaded detector (its bundle hash,
    say), or None when there is none and studies wait in ``awaiting-detector``.
    """
    def check() -> tuple[bool, str]:
        described = describe_detector()
        if described is None:
            return False, "no detector loaded: studies wait in awaiting-detector"
        return True, described
    return check


def ocr_check(enabled: bool) -> Check:
    """Passes when OCR verification is off, or on and its positive control passed at start-up
    (the service does not start when it fails)."""
    def check() -> tuple[bool, str]:
        if not enabled:
            return True, "deid.ocr = false: cleaned pixels are not verified by OCR"
        return True, "tesseract read the control text at start-up"
    return check


class OpsServer(ThreadingHTTPServer):
    """``/livez``, ``/readyz``, ``/healthz`` and ``/metrics``; :func:`start_http` starts it,
    :meth:`stop` stops it."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], live: Mapping[str, Check], ready: Mapping[str, Check],
                 registry: CollectorRegistry, check_timeout_s: float) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, OpsHandler)
        self.live, self.ready = live, ready
        self.registry = registry
        self.check_timeout_s = check_timeout_s
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="sonoshot-http", daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def run_checks(self, checks: Mapping[str, Check]) -> dict[str, tuple[bool, str]]:
        """Run ``checks`` concurrently; a check that raises or times out fails."""
        futures = {name: self.executor.submit(check) for name, check in list(checks.items())}
        results: dict[str, tuple[bool, str]] = {}
        for name, future in futures.items():
            try:
                ok, detail = future.result(timeout=self.check_timeout_s)
                results[name] = (bool(ok), str(detail))
            except TimeoutError:
                results[name] = (False, f"no answer within {self.check_timeout_s:g} s")
            except Exception as exc:  # a check's failure is its result, whatever the exception
                message = str(exc).splitlines()[0][:200] if str(exc) else ""
                results[name] = (False, f"{type(exc).__name__}: {message}".rstrip(": "))
        return results

    def stop(self) -> None:
        """Stop serving, close the socket and wait for the serving thread."""
        self.shutdown()
        self.server_close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.thread.join()


class OpsHandler(BaseHTTPRequestHandler):
    """Answers GET /livez, /readyz, /healthz and /metrics; anything else is 404 (or 405 for other methods)."""

    server: OpsServer
    server_version = "sonoshot"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/livez", "/healthz"):
            self._health(path, self.server.live)
        elif path == "/readyz":
            self._health(path, {**self.server.live, **self.server.ready})
        elif path == "/metrics":
            self._metrics()
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found: try /livez, /readyz or /metrics\n",
                       "text/plain; charset=utf-8")

    def _health(self, path: str, checks: Mapping[str, Check]) -> None:
        results = self.server.run_checks(checks)
        failing = sorted(name for name, (ok, _detail) in results.items() if not ok)
        shown = {name: {"ok": ok, "detail": detail} for name, (ok, detail) in results.items()}
        body: dict[str, Any] = {"status": "failing" if failing else "ok", "checks": shown}
        if failing:
            body["failing"] = failing
            log.info("%s failing: %s", path.lstrip("/"), ", ".join(f"{n} ({results[n][1]})" for n in failing))
        self._send(HTTPStatus.SERVICE_UNAVAILABLE if failing else HTTPStatus.OK,
                   json.dumps(body, sort_keys=True).encode() + b"\n", "application/json")

    def _metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        self._send(HTTPStatus.OK, encoder(self.server.registry), content_type)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
        log.debug("http %s: " + format, self.client_address[0], *args)


def start_http(config: HttpConfig, live: Mapping[str, Check], registry: CollectorRegistry,
               check_timeout_s: float = CHECK_TIMEOUT_S, ready: Mapping[str, Check] | None = None) -> OpsServer:
    """Bind ``config.bind_address:config.port`` and serve in a background thread.

    ``live`` are the liveness checks (``/livez``, ``/healthz``); ``/readyz`` runs them and
    ``ready``. Both are read at each request, so the caller may add checks later. The caller
    decides whether to start it at all (``config.enabled``).

    Raises
    ------
    OSError
        If the address cannot be bound (port in use, address not local).
    """
    server = OpsServer((config.bind_address, config.port), live, ready or {}, registry, check_timeout_s)
    server.thread.start()
    log.info("http: /livez, /readyz, /healthz and /metrics on %s:%d", config.bind_address, server.port)
    return server
