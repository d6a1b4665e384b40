"""The sonoshot daemon as a real process for tests: its own config, folders and free port."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import tomli_w

from tests.peers import echo, wait_for
from tests.util import free_port

KEY = "5f" * 32  # a fixed test key: pseudonyms repeat across restarts, as in production


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def fit_demo_bundle(busi: Path, root: Path, per_class: int = 4) -> Path:
    """A real detector bundle fitted by ``sonoshot fit`` on the first BUSI images (read in place)."""
    from sonoshot.cli import main

    for label in ("normal", "abnormal"):
        (root / label).mkdir(parents=True)
        for image in sorted((busi / "images" / label).iterdir())[:per_class]:
            (root / label / image.name).symlink_to(image)
    out = root / "bundle"
    status = main(["fit", "--normal", str(root / "normal"), "--abnormal", str(root / "abnormal"),
                   "--backbone", "efficientnet-lite0", "--out", str(out)])
    if status != 0:
        raise RuntimeError(f"sonoshot fit exited with {status}")
    return out


class Daemon:
    """``sonoshot serve`` in a subprocess; ``overrides`` are merged into its TOML config.

    ``role`` and ``queues`` are ``serve --role/--queues`` (cluster mode); a process without the
    SCP is ready when its /healthz answers, one with it when it answers C-ECHO. ``nice`` runs it
    at a lower CPU priority (``nice -n``).
    """

    def __init__(self, workdir: Path, overrides: dict[str, Any] | None = None, aet: str = "SONOSHOT",
                 role: str = "all", queues: tuple[str, ...] = (), nice: int = 0) -> None:
        self.workdir = workdir
        self.role, self.queues, self.nice = role, queues, nice
        self.port = free_port()
        self.aet = aet
        workdir.mkdir(parents=True, exist_ok=True)
        var = workdir / "var"
        (workdir / "deid.key").write_text(KEY + "\n")
        self.config = _merge({
            "network": {"ae_title": aet, "port": self.port, "bind_address": "127.0.0.1"},
            "storage": {"spool_dir": str(var / "spool"), "work_dir": str(var / "work"),
                        "quarantine_dir": str(var / "quarantine"), "min_free_mb": 1},
            "database": {"url": f"sqlite:///{var / 'sonoshot.db'}"},
            "completion": {"quiet_period_s": 1.0, "sweep_interval_s": 0.2},
            "deid": {"key_file": str(workdir / "deid.key")},
            "http": {"port": free_port()},
        }, overrides or {})
        self.config_path = workdir / "sonoshot.toml"
        self.config_path.write_text(tomli_w.dumps(self.config))
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "sonoshot.log"

    @property
    def spool(self) -> Path:
        return Path(self.config["storage"]["spool_dir"])

    @property
    def db_path(self) -> Path:
        return Path(self.config["database"]["url"].removeprefix("sqlite:///"))

    def start(self, timeout: float = 60.0) -> "Daemon":
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the process without waiting for it (several can then start side by side)."""
        log = open(self.log_path, "ab")
        serve = ["serve", "--role", self.role, *(["--queues", ",".join(self.queues)] if self.queues else [])]
        niced = ["nice", "-n", str(self.nice)] if self.nice else []
        self.process = subprocess.Popen(
            [*niced, sys.executable, "-m", "sonoshot", "--config", str(self.config_path), *serve],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_ready(self, timeout: float = 60.0) -> "Daemon":
        def listening() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"sonoshot exited with {self.process.returncode}:\n{self.log()}")
            if self.role not in ("all", "receiver"):
                return self.healthz() is not None
            allowed = self.config["network"].get("allowed_calling_ae_titles") or ["ECHOSCU"]
            return echo("127.0.0.1", self.port, self.aet, calling_aet=allowed[0])

        try:
            wait_for(listening, timeout=timeout, interval=0.2, what="sonoshot to answer C-ECHO")
        except BaseException:
            self.kill()  # __exit__ does not run when __enter__ fails: leave no daemon behind
            raise
        return self

    def healthz(self) -> dict | None:
        """The /healthz answer (200 or 503), or None when nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.config['http']['port']}/healthz", timeout=5) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as error:
            return json.loads(error.read())
        except OSError:
            return None

    def pause(self) -> None:
        """SIGSTOP: the process stops dead (no heartbeat, no work) until :meth:`resume`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the drain path."""
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: the crash path."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()

    def query(self, sql: str, *params: Any) -> list[tuple]:
        """Read the daemon's SQLite database (as an auditor would)."""
        with sqlite3.connect(self.db_path, timeout=30) as connection:
            return connection.execute(sql, params).fetchall()

    def study_state(self, study_uid: str) -> str | None:
        rows = self.query("select state from studies where study_instance_uid = ?", study_uid)
        return rows[0][0] if rows else None
