"""Real DICOM peers for the tests: Orthanc (the PACS) and DCMTK programs, as subprocesses.

Every program runs on loopback with free ports, in a temp folder, and is stopped at the end.
DCMTK is started with ``TCP_NODELAY=1`` (without it each message waits on a delayed ACK).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.util import free_port, require_binary

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Orthanc:
    """A real Orthanc server acting as the hospital PACS.

    ``modalities`` maps a name to ``(ae_title, host, port)``: where Orthanc may send
    (``/modalities/{name}/store``) and whom it accepts C-STORE from. ``plugins`` are plugin
    files to load (none by default).
    """

    def __init__(self, workdir: Path, modalities: dict[str, tuple[str, str, int]] | None = None,
                 aet: str = "ORTHANC", plugins: list[str] | None = None) -> None:
        require_binary("Orthanc", *(plugins or ()))
        self.workdir = workdir
        self.aet = aet
        self.plugins = list(plugins or ())  # shared libraries to load, e.g. the web viewer
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities = dict(modalities or {})
        self.process: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> Path:
        config = {
            "Name": "sonoshot-test-pacs",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "Plugins": self.plugins,
            "StableAge": 1,
            "SaveJobs": False,
            "ConcurrentJobs": 2,
            "DicomScuTimeout": 30,
            "DicomAssociationCloseDelay": 0,  # release right after a send: studies complete sooner
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self) -> "Orthanc":
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        log = open(self.workdir / "orthanc.log", "ab")
        self.process = subprocess.Popen(["Orthanc", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.workdir)
        wait_for(self._alive, timeout=30, what="Orthanc to answer over HTTP")
        return self

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.workdir}/orthanc.log")
        try:
            self.rest("/system")
            return True
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def rest(self, path: str, method: str = "GET", body: Any = None, timeout: float = 60.0) -> Any:
        """Call Orthanc's REST API; JSON bodies in and out (raw bytes for non-JSON answers)."""
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
        try:
            return json.loads(payload)
        except ValueError:
            return payload

    def upload(self, path: Path) -> dict:
        """Store a DICOM file in Orthanc (as a modality would have), returning Orthanc's answer."""
        return self.rest("/instances", method="POST", body=path.read_bytes())

    def study_instance_uids(self) -> set[str]:
        return {self.rest(f"/studies/{s}")["MainDicomTags"]["StudyInstanceUID"] for s in self.rest("/studies")}

    def instances_in_study(self, study_uid: str) -> list[dict]:
        """Every instance of the study with StudyInstanceUID ``study_uid`` (tags simplified)."""
        found = self.rest("/tools/find", "POST", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        out = []
        for study in found:
            for instance in self.rest(f"/studies/{study}/instances"):
                tags = self.rest(f"/instances/{instance['ID']}/simplified-tags")
                out.append({"ID": instance["ID"], **tags})
        return out


class StoreSCP:
    """DCMTK ``storescp`` writing every received instance into ``outdir``."""

    def __init__(self, outdir: Path, aet: str = "STORESCP") -> None:
        require_binary("storescp")
        self.outdir = outdir
        self.aet = aet
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "StoreSCP":
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["storescp", "--aetitle", self.aet, "--output-directory", str(self.outdir),
             "--accept-all", "--promiscuous", str(self.port)],
            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: echo("127.0.0.1", self.port, self.aet), what="storescp to listen")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=10)


def echo(host: str, port: int, called_aet: str, calling_aet: str = "ECHOSCU") -> bool:
    """C-ECHO with DCMTK ``echoscu``; True when the peer answered Success."""
    result = subprocess.run(["echoscu", "-aet", calling_aet, "-aec", called_aet, host, str(port)],
                            env=DCMTK_ENV, capture_output=True, timeout=30)
    return result.returncode == 0


def storescu(port: int, files: list[Path], called_aet: str = "SONOSHOT", calling_aet: str = "STORESCU",
             extra: tuple[str, ...] = (), timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Send ``files`` with DCMTK ``storescu`` proposing each file's own transfer syntax family."""
    require_binary("storescu")
    args = ["storescu", "-v", "-aet", calling_aet, "-aec", called_aet, "--required", *extra,
            "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(args, env=DCMTK_ENV, capture_output=True, text=True, timeout=timeout)


def dcmsend(port: int, files: list[Path], called_aet: str = "SONOSHOT", calling_aet: str = "DCMSEND",
            timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Send ``files`` with DCMTK ``dcmsend`` (each file's own transfer syntax; real devices write UIDs
    with leading zeros, which dcmsend would otherwise refuse to send)."""
    require_binary("dcmsend")
    args = ["dcmsend", "-v", "--no-uid-checks", "-aet", calling_aet, "-aec", called_aet, "127.0.0.1", str(port),
            *map(str, files)]
    return subprocess.run(args, env=DCMTK_ENV, capture_output=True, text=True, timeout=timeout)
