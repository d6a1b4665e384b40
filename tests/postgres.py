"""A throwaway PostgreSQL server for tests: its own cluster in a temporary folder, on 127.0.0.1.

``postgres_url`` (session scope) starts it once and stops it at the end. PostgreSQL refuses to
run as root, so as root the cluster belongs to the ``postgres`` system user (``runuser``). When
the server programs are missing the fixture skips, or fails in CI (``make test`` installs them).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine

from tests.util import free_port

SERVER_PROGRAMS = ("initdb", "pg_ctl")


def _bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _as_owner(argv: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *argv] if owner else argv


class PostgresServer:
    """One PostgreSQL cluster in ``root`` on a free 127.0.0.1 port, trust auth; ``stop()`` and
    ``start()`` again keep its data (a database outage in a test)."""

    def __init__(self, root: Path, max_connections: int = 50) -> None:
        pytest.importorskip("psycopg", reason="psycopg missing: pip install -e '.[test]'")
        bin_dir = _bin_dir()
        if bin_dir is None:
            _missing("PostgreSQL server programs (initdb, pg_ctl) missing (make test installs them as root)")
        self.owner = None
        if os.geteuid() == 0:  # the server refuses to run as root
            self.owner = "postgres"
            if shutil.which("runuser") is None:
                _missing("runuser missing: cannot start PostgreSQL as the postgres user")
            try:
                import pwd
                pwd.getpwnam(self.owner)
            except KeyError:
                _missing("no 'postgres' system user (apt-get install postgresql creates it)")
        self.root, self.data, self.log = root, root / "data", root / "server.log"
        if self.owner:
            shutil.chown(root, user=self.owner)
        os.chmod(root, 0o700)
        self.port = free_port()
        self.max_connections = max_connections
        self.initdb, self.pg_ctl = str(bin_dir / "initdb"), str(bin_dir / "pg_ctl")
        self.running = False
        subprocess.run(_as_owner([self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                                  "--locale=C", "--no-sync"], self.owner),
                       check=True, capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        """A SQLAlchemy URL (psycopg 3) of its ``postgres`` database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c synchronous_commit=off -c full_page_writes=off -c max_connections={self.max_connections}")
        result = subprocess.run(_as_owner([self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options,
                                           "-w", "-t", "60", "start"], self.owner),
                                capture_output=True, text=True, timeout=90)
        if result.returncode != 0:
            server_log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {result.stdout}{result.stderr}\n{server_log}")
        self.running = True

    def stop(self) -> None:
        """Fast shutdown: open transactions are rolled back, clients are disconnected."""
        if self.running:
            subprocess.run(_as_owner([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"], self.owner),
                           capture_output=True, timeout=60)
            self.running = False


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL (psycopg 3) of a fresh, empty PostgreSQL server, trust auth, 127.0.0.1 only."""
    root = Path(tempfile.mkdtemp(prefix="sonoshot-pg-"))
    server = None
    try:
        server = PostgresServer(root)
        server.start()
        yield server.url
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def fresh_database(server_url: str, prefix: str = "sonoshot") -> Iterator[str]:
    """A new, empty database on the server of ``server_url`` (its URL), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()
