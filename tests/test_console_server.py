"""The console's server on its own: TLS from config (a real handshake with a certificate made by
openssl), security headers and cookie flags, 127.0.0.1 by default, and a failed login with an
unknown name that is audited without storing what was typed."""

from __future__ import annotations

import http.cookiejar
import json
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest

from sonoshot.config import Config, parse_config
from sonoshot.console.app import ConsoleContext, create_app
from sonoshot.console.auth import hash_password
from sonoshot.db import users
from sonoshot.console.server import ConsoleServer
from sonoshot.dicom_io.spool import Spool
from tests.console_client import ConsoleClient
from tests.ops_rows import new_store
from tests.util import free_port, require_binary


@pytest.fixture
def store(tmp_path):
    store = new_store(tmp_path)
    yield store
    store.dispose()


def _serve(tmp_path, store, **console) -> ConsoleServer:
    config = parse_config({"console": {"enabled": True, "port": free_port(),
                                       "secret_key_file": str(tmp_path / "console.key"), **console},
                           "storage": {"spool_dir": str(tmp_path / "spool")}})
    app = create_app(ConsoleContext(config, store, Spool(tmp_path / "spool"), b"k" * 32))
    return ConsoleServer(config.console, app).start()


def test_console_listens_on_loopback_by_default():
    assert Config().console.bind_address == "127.0.0.1" and Config().console.enabled is False


def test_console_over_tls(tmp_path, store):
    require_binary("openssl")
    cert, key = tmp_path / "console.pem", tmp_path / "console.key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    server = _serve(tmp_path, store, tls={"certificate": str(cert), "private_key": str(key)})
    try:
        context = ssl.create_default_context(cafile=str(cert))
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                             urllib.request.HTTPCookieProcessor(jar))
        with opener.open(f"https://127.0.0.1:{server.port}/login", timeout=30) as response:
            assert response.status == 200 and b'name="csrf_token"' in response.read()
            headers = response.headers
        assert headers["Strict-Transport-Security"].startswith("max-age=")
        assert headers["X-Frame-Options"] == "DENY" and "default-src 'self'" in headers["Content-Security-Policy"]
        assert headers["Cache-Control"] == "no-store"
        (cookie,) = list(jar)
        assert cookie.secure and cookie.has_nonstandard_attr("HttpOnly")
        with pytest.raises(OSError):  # plain HTTP on the TLS port gets no page (an error answer or a reset)
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/login", timeout=10).read()
        with pytest.raises(urllib.error.URLError):  # nor does a client that does not trust the certificate
            urllib.request.urlopen(f"https://127.0.0.1:{server.port}/login", timeout=10)
    finally:
        server.stop()


def test_an_unknown_name_is_refused_and_not_stored(tmp_path, store):
    server = _serve(tmp_path, store)
    try:
        client = ConsoleClient(f"http://127.0.0.1:{server.port}")
        assert client.login("Zwinglivarth Hieronymus", "whatever it is") == 401
        status, body = client.get("/studies")
        assert status == 200 and b"Log in" in body  # redirected to the login page
        assert client.post("/login", {"name": "x", "password": "y"})[0] == 401
        users.add_user(store, "ann", "admin", hash_password("a long enough password"), "test")
        for target in ("//evil.example/", "/\\evil.example/", "https://evil.example/"):
            client.get("/login")
            status, _ = client.post("/login", {"name": "ann", "password": "a long enough password", "next": target})
            assert status == 200 and client.url == f"http://127.0.0.1:{server.port}/", target
        client.get("/login")
        client.post("/login", {"name": "ann", "password": "a long enough password", "next": "/drift"})
        assert client.url.endswith("/drift")
    finally:
        server.stop()
    with store.reader.connect() as connection:
        details = [json.loads(d) for (d,) in connection.exec_driver_sql(
            "select detail from events where kind = 'console' and outcome = 'login-failed'")]
    assert len(details) == 2 and all(d["user"] is None for d in details)
    assert "Zwinglivarth" not in json.dumps(details)
