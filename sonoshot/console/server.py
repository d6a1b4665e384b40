"""server.py
=========

The console's HTTP(S) server: cheroot (CherryPy's production WSGI server) in a background
thread, with TLS from ``console.tls`` (Python's ssl module). Waitress, the other pure-Python
server at hand, has no TLS.
"""

from __future__ import annotations

import logging
import threading

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from sonoshot.config import ConsoleConfig

log = logging.getLogger(__name__)


class ConsoleServer:
    """Serves a WSGI application on ``config.bind_address:config.port``; :meth:`stop` ends it.

    Raises
    ------
    OSError
        From :meth:`start` if the address cannot be bound.
    """

    def __init__(self, config: ConsoleConfig, app) -> None:
        self.config = config
        self.server = wsgi.Server((config.bind_address, config.port), app, numthreads=4,
                                  server_name="sonoshot-console")
        if config.tls.certificate:
            self.server.ssl_adapter = BuiltinSSLAdapter(config.tls.certificate, config.tls.private_key)
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.bind_addr[1]

    @property
    def scheme(self) -> str:
        return "https" if self.config.tls.certificate else "http"

    def start(self) -> ConsoleServer:
        self.server.prepare()  # binds now, so a port in use fails the caller
        self.thread = threading.Thread(target=self.server.serve, name="sonoshot-console", daemon=True)
        self.thread.start()
        log.info("console: %s://%s:%d/", self.scheme, self.config.bind_address, self.port)
        return self

    def stop(self) -> None:
        self.server.stop()
        if self.thread is not None:
            self.thread.join(timeout=10)
            self.thread = None
