"""A throwaway PostgreSQL server for tests: its own cluster in a temporary folder, on 127.0.0.1.

``postgres_url`` (session scope) starts it once and stops it at the end. PostgreSQL refuses to
run as root, so as root the cluster belongs to the ``postgres`` system user (``runuser``). When
the server programs are missing the fixture skips, or fails in CI (``make test`` installs them).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL (psycopg 3) of a fresh, empty PostgreSQL server, trust auth, 127.0.0.1 only."""
    pytest.importorskip("psycopg", reason="psycopg missing: pip install -e '.[test]'")
    bin_dir = _bin_dir()
    if bin_dir is None:
        _missing("PostgreSQL server programs (initdb, pg_ctl) missing (make test installs them as root)")
    owner = None
    if os.geteuid() == 0:  # the server refuses to run as root
        owner = "postgres"
        if shutil.which("runuser") is None:
            _missing("runuser missing: cannot start PostgreSQL as the postgres user")
        try:
            import pwd
            pwd.getpwnam(owner)
        except KeyError:
            _missing("no 'postgres' system user (apt-get install postgresql creates it)")
    root = Path(tempfile.mkdtemp(prefix="sonoshot-pg-"))
    data, log = root / "data", root / "server.log"
    if owner:
        shutil.chown(root, user=owner)
    os.chmod(root, 0o700)
    port = free_port()
    initdb, pg_ctl = str(bin_dir / "initdb"), str(bin_dir / "pg_ctl")
    started = False
    try:
        subprocess.run(_as_owner([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                                  "--locale=C", "--no-sync"], owner),
                       check=True, capture_output=True, timeout=120)
        options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
        result = subprocess.run(_as_owner([pg_ctl, "-D", str(data), "-l", str(log), "-o", options,
                                           "-w", "-t", "60", "start"], owner),
                                capture_output=True, text=True, timeout=90)
        if result.returncode != 0:
            server_log = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {result.stdout}{result.stderr}\n{server_log}")
        started = True
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run(_as_owner([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], owner),
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
