"""A throwaway OpenStack Swift for tests: an S3-compatible object store on 127.0.0.1.

``swift_server`` (session scope) builds one-replica rings in a temporary folder, starts
memcached and Swift's account, container and object servers and its proxy (run by Debian's
``/usr/bin/python3``) with the ``s3api`` middleware, ``tempauth`` users that double as S3 keys
(``account:user`` / password) and at-rest encryption (``keymaster`` + ``encryption``), and
creates sonoshot's three buckets with per-role container ACLs:

| bucket | read | write |
|---|---|---|
| ``<prefix>-originals`` | worker | receiver, worker |
| ``<prefix>-work`` | worker | worker |
| ``<prefix>-reports`` | worker, deliverer | worker |

When Swift or memcached is missing the fixture skips, or fails in CI (``make test`` installs them).
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.peers import wait_for
from tests.util import free_port, peer_missing

SWIFT_PYTHON = "/usr/bin/python3"  # Debian's Swift runs on the system interpreter
ACCOUNT = "sonoshot"
ROLES = {"admin": "admin-secret", "receiver": "receiver-secret", "worker": "worker-secret",
         "deliverer": "deliverer-secret"}
BUCKET_ACLS = {  # kind: (readers, writers)
    "originals": (["worker"], ["receiver", "worker"]),
    "work": (["worker"], ["worker"]),
    "reports": (["worker", "deliverer"], ["worker"]),
}

_LAUNCH = '''
import sys
from swift.common import utils
utils.set_swift_dir(sys.argv[1])  # swift.conf and the rings from the temporary folder, not /etc/swift
from swift.common.wsgi import run_wsgi
kwargs = {}
if sys.argv[3] == "object-server":
    from swift.obj import server
    kwargs["global_conf_callback"] = server.global_conf_callback
sys.exit(run_wsgi(sys.argv[2], sys.argv[3], verbose=True, **kwargs))
'''


@dataclass
class SwiftServer:
    """A running Swift: its S3 endpoint, role keys, bucket prefix and the folder of its disks."""

    root: Path
    endpoint: str
    bucket_prefix: str
    processes: dict[str, subprocess.Popen]
    commands: dict[str, list[str]]

    def key(self, role: str) -> tuple[str, str]:
        """The S3 access key ID and secret of ``role``."""
        return f"{ACCOUNT}:{role}", ROLES[role]

    def secret_file(self, role: str, folder: Path) -> Path:
        """Write ``role``'s secret into ``folder`` (mode 0600) for ``objects.secret_access_key_file``."""
        path = folder / f"{role}.secret"
        path.write_text(ROLES[role] + "\n")
        path.chmod(0o600)
        return path

    def objects_config(self, role: str, folder: Path) -> dict:
        """The ``[objects]`` table of a sonoshot config for ``role``."""
        return {"store": "s3", "endpoint_url": self.endpoint, "bucket_prefix": self.bucket_prefix,
                "access_key_id": self.key(role)[0], "secret_access_key_file": str(self.secret_file(role, folder)),
                "upload_retry_max_s": 1.0}

    def client(self, role: str = "admin"):
        import boto3
        from botocore.config import Config

        key, secret = self.key(role)
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                            region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def keys(self, kind: str) -> list[str]:
        """Every key in the bucket of ``kind`` (as the admin)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=f"{self.bucket_prefix}-{kind}")
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def stop_proxy(self) -> None:
        """Take the S3 endpoint down (the storage servers keep their data)."""
        proxy = self.processes.pop("proxy")
        proxy.terminate()
        proxy.wait(timeout=30)

    def start_proxy(self) -> None:
        self.processes["proxy"] = _start(self.root, "proxy", self.commands["proxy"])
        wait_for(self._healthy, timeout=60, interval=0.2, what="the Swift proxy")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/healthcheck", timeout=5) as response:
                return response.read() == b"OK"
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def _start(root: Path, name: str, argv: list[str]) -> subprocess.Popen:
    log = open(root / f"{name}.log", "ab")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=root)


def _server_conf(root: Path, name: str, port: int) -> Path:
    path = root / f"{name}-server.conf"
    path.write_text(textwrap.dedent(f"""\
        [DEFAULT]
        bind_ip = 127.0.0.1
        bind_port = {port}
        devices = {root / 'devices'}
        mount_check = false
        swift_dir = {root}
        user = {_user()}
        workers = 0
        [pipeline:main]
        pipeline = {name}-server
        [app:{name}-server]
        use = egg:swift#{name}
        """))
    return path


def _user() -> str:
    return getpass.getuser()


def _proxy_conf(root: Path, port: int, memcached_port: int) -> Path:
    users = "\n".join(f"user_{ACCOUNT}_{role} = {secret}{' .admin' if role == 'admin' else ''}"
                      for role, secret in ROLES.items())
    secret = base64.b64encode(os.urandom(32)).decode()  # the keymaster's root secret
    path = root / "proxy-server.conf"
    path.write_text(textwrap.dedent(f"""\
        [DEFAULT]
        bind_ip = 127.0.0.1
        bind_port = {port}
        swift_dir = {root}
        user = {_user()}
        workers = 0
        [pipeline:main]
        pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo versioned_writes keymaster encryption proxy-logging proxy-server
        [app:proxy-server]
        use = egg:swift#proxy
        account_autocreate = true
        [filter:catch_errors]
        use = egg:swift#catch_errors
        [filter:gatekeeper]
        use = egg:swift#gatekeeper
        [filter:healthcheck]
        use = egg:swift#healthcheck
        [filter:proxy-logging]
        use = egg:swift#proxy_logging
        [filter:cache]
        use = egg:swift#memcache
        memcache_servers = 127.0.0.1:{memcached_port}
        [filter:listing_formats]
        use = egg:swift#listing_formats
        [filter:s3api]
        use = egg:swift#s3api
        location = us-east-1
        [filter:tempauth]
        use = egg:swift#tempauth
        """) + users + "\n" + textwrap.dedent(f"""\
        [filter:copy]
        use = egg:swift#copy
        [filter:slo]
        use = egg:swift#slo
        [filter:dlo]
        use = egg:swift#dlo
        [filter:versioned_writes]
        use = egg:swift#versioned_writes
        [filter:keymaster]
        use = egg:swift#keymaster
        encryption_root_secret = {secret}
        [filter:encryption]
        use = egg:swift#encryption
        """))
    return path


def _rings(root: Path, ports: dict[str, int]) -> None:
    for name, port in ports.items():
        builder = str(root / f"{name}.builder")
        for args in (["create", "0", "1", "0"], ["add", f"r1z1-127.0.0.1:{port}/d1", "1"], ["rebalance"]):
            result = subprocess.run(["swift-ring-builder", builder, *args], capture_output=True, text=True,
                                    timeout=60)
            if result.returncode not in (0, 1):  # rebalance answers 1 with a warning on a one-device ring
                raise RuntimeError(f"swift-ring-builder {' '.join(args)}: {result.stdout}{result.stderr}")


def _create_buckets(endpoint: str, prefix: str) -> None:
    """Buckets and their per-role ACLs, set with Swift's own API as the operator would."""
    request = urllib.request.Request(f"{endpoint}/auth/v1.0", headers={
        "X-Auth-User": f"{ACCOUNT}:admin", "X-Auth-Key": ROLES["admin"]})
    with urllib.request.urlopen(request, timeout=30) as response:
        token, storage = response.headers["X-Auth-Token"], response.headers["X-Storage-Url"]
    for kind, (readers, writers) in BUCKET_ACLS.items():
        request = urllib.request.Request(f"{storage}/{prefix}-{kind}", method="PUT", headers={
            "X-Auth-Token": token, "X-Container-Read": ",".join(f"{ACCOUNT}:{r}" for r in readers),
            "X-Container-Write": ",".join(f"{ACCOUNT}:{w}" for w in writers)})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status in (201, 202), response.status


def start_swift(root: Path, bucket_prefix: str = "sonoshot") -> SwiftServer:
    """Build, start and provision a Swift in ``root``; the caller stops it."""
    for program in ("swift-proxy-server", "swift-ring-builder", "memcached"):
        if shutil.which(program) is None or not Path(SWIFT_PYTHON).exists():
            peer_missing(f"{program} missing: OpenStack Swift and memcached are needed (make test installs them)")
    (root / "devices" / "d1").mkdir(parents=True)
    (root / "swift.conf").write_text("[swift-hash]\nswift_hash_path_suffix = sonoshot-tests\n"
                                     "swift_hash_path_prefix = sonoshot-tests\n"
                                     "[storage-policy:0]\nname = Policy-0\ndefault = yes\n")
    ports = {"account": free_port(), "container": free_port(), "object": free_port()}
    _rings(root, ports)
    launcher = root / "launch.py"
    launcher.write_text(_LAUNCH)
    memcached_port, proxy_port = free_port(), free_port()
    commands = {"memcached": ["memcached", "-l", "127.0.0.1", "-p", str(memcached_port), "-U", "0",
                              *(["-u", _user()] if _user() == "root" else [])]}
    for name, port in ports.items():
        commands[name] = [SWIFT_PYTHON, str(launcher), str(root), str(_server_conf(root, name, port)),
                          f"{name}-server"]
    commands["proxy"] = [SWIFT_PYTHON, str(launcher), str(root), str(_proxy_conf(root, proxy_port, memcached_port)),
                         "proxy-server"]
    server = SwiftServer(root, f"http://127.0.0.1:{proxy_port}", bucket_prefix, {}, commands)
    try:
        for name, argv in commands.items():
            server.processes[name] = _start(root, name, argv)
        wait_for(server._healthy, timeout=60, interval=0.2, what="the Swift proxy")
        deadline = time.monotonic() + 60
        while True:  # the storage servers may still be starting: the first PUT tells
            try:
                _create_buckets(server.endpoint, bucket_prefix)
                break
            except (OSError, urllib.error.URLError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    except BaseException:
        server.stop()
        logs = {p.name: p.read_text(errors="replace")[-2000:] for p in root.glob("*.log")}
        print(json.dumps(logs, indent=1), file=sys.stderr)
        raise
    return server


@pytest.fixture(scope="session")
def swift_server() -> Iterator[SwiftServer]:
    """An S3-compatible Swift on 127.0.0.1 with sonoshot's buckets (see the module docstring)."""
    pytest.importorskip("boto3", reason="boto3 missing")
    root = Path(tempfile.mkdtemp(prefix="sonoshot-swift-"))
    server = start_swift(root)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
