"""Issue 11's acceptance against a real ``sonoshot serve``: idle connections cannot lock senders
out, declared-huge PDUs are refused from their header with bounded memory, a 1 GiB instance is
received with bounded memory, and an idle association still ends at the network timeout.

Hostile peers are raw sockets (tests/rawpeer.py) bound to other loopback addresses; the
legitimate sender is DCMTK from 127.0.0.1. Resident memory is the daemon's VmRSS, sampled while
the test runs.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import UltrasoundMultiFrameImageStorage

from tests.daemon import Daemon
from tests.peers import DCMTK_ENV, echo, wait_for
from tests.rawpeer import A_ABORT, A_ASSOCIATE_AC, RawPeer, pdu
from tests.scenarios import SMALL_US, acknowledged, http_get, make_study, storescu_args
from tests.util import require_binary

MiB = 2**20


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class PeakRSS:
    """Samples a process's resident memory every 20 ms while in the ``with`` block."""

    def __init__(self, pid: int) -> None:
        self.pid, self.start, self.peak = pid, rss_mb(pid), 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> PeakRSS:
        self.peak = self.start
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> float:
        return self.peak - self.start


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    text = http_get(daemon, "/metrics")[1].decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(name)


def timed(command: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(command, env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - started


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    require_binary("echoscu", "storescu")
    with Daemon(tmp_path_factory.mktemp("hostile"), {"completion": {"quiet_period_s": 600}}) as d:
        yield d


def _legitimate_sender_gets_in(daemon: Daemon, shared_dicom: Path, outdir: Path) -> tuple[float, float]:
    echo_result, echo_s = timed(["echoscu", "-aet", "LEGIT", "-aec", daemon.aet, "127.0.0.1", str(daemon.port)])
    assert echo_result.returncode == 0, echo_result.stderr
    _, files = make_study(shared_dicom / SMALL_US, outdir)
    store_result, store_s = timed(storescu_args(daemon.port, list(files), calling_aet="LEGIT"))
    assert set(acknowledged(store_result.stderr).values()) == {"Success"}, store_result.stderr
    (sop,) = files.values()
    assert daemon.query("select count(*) from instances where sop_instance_uid = ?", sop) == [(1,)]
    return echo_s, store_s


def test_100_idle_connections_from_one_address_lock_nobody_out(daemon, shared_dicom, tmp_path):
    idle = [RawPeer(daemon.port, "127.0.0.2") for _ in range(100)]
    try:
        wait_for(lambda: metric(daemon, "sonoshot_pending_connections") == 8, timeout=10,
                 what="8 pending connections (network.max_pending_per_address)")
        echo_s, store_s = _legitimate_sender_gets_in(daemon, shared_dicom, tmp_path / "study")
        print(f"\n100 idle connections from 127.0.0.2: C-ECHO in {echo_s:.2f} s, C-STORE in {store_s:.2f} s")
        assert echo_s < 2 and store_s < 2
        assert metric(daemon, "sonoshot_connections_refused_total", reason="pending-per-address") == 92
    finally:
        for peer in idle:
            peer.close()


def test_idle_connections_from_many_addresses_hold_the_cap(daemon, shared_dicom, tmp_path):
    addresses = [f"127.0.1.{n}" for n in range(1, 41)]
    idle = []
    for address in addresses:  # 320 connections: 8 from each of 40 addresses
        idle += [RawPeer(daemon.port, address) for _ in range(8)]
    try:
        def refused() -> float:
            return sum(metric(daemon, "sonoshot_connections_refused_total", reason=reason)
                       for reason in ("pending-total", "pending-evicted"))

        wait_for(lambda: refused() == 320 - 64, timeout=20, interval=0.2, what="256 connections closed by the cap")
        assert metric(daemon, "sonoshot_pending_connections") == 64  # network.max_pending
        echo_s, store_s = _legitimate_sender_gets_in(daemon, shared_dicom, tmp_path / "study")
        print(f"\n320 idle connections from 40 addresses: C-ECHO in {echo_s:.2f} s, C-STORE in {store_s:.2f} s")
        assert echo_s < 2 and store_s < 2
        assert metric(daemon, "sonoshot_pending_connections") <= 64
        started = time.monotonic()
        wait_for(lambda: metric(daemon, "sonoshot_pending_connections") == 0, timeout=15, interval=0.25,
                 what="the idle connections to time out")
        print(f"the idle ones were all closed {time.monotonic() - started:.1f} s later (network.request_timeout_s 5)")
        assert echo("127.0.0.1", daemon.port, daemon.aet)
    finally:
        for peer in idle:
            peer.close()


def test_declared_huge_pdus_are_refused_from_the_header(daemon):
    """A 4 GiB A-ASSOCIATE-RQ followed by 600 MiB of zeros, and 4 GiB P-DATA-TFs in associations."""
    before = metric(daemon, "sonoshot_connections_refused_total", reason="pdu-too-large")
    zeros = b"\0" * MiB
    with PeakRSS(daemon.process.pid) as rss:
        with RawPeer(daemon.port, "127.0.0.3") as peer:
            peer.send(pdu(0x01, b"", declared=2**32 - 1))
            sent = sum(1 for _ in range(600) if peer.send(zeros))
            answer = peer.read_pdu(timeout=10)
            assert answer is not None and answer[0] == A_ABORT and answer[1][3] == 0x06, answer
        associated = [RawPeer(daemon.port, f"127.0.0.{n}") for n in range(4, 12)]
        for peer in associated:
            assert peer.associate()[0] == A_ASSOCIATE_AC
            peer.send(pdu(0x04, b"", declared=2**32 - 1))
        for peer in associated:
            pushed = sum(1 for _ in range(64) if peer.send(zeros))
            answer = peer.read_pdu(timeout=10)
            assert answer is not None and answer[0] == A_ABORT, answer
            assert pushed < 64  # the daemon closed the connection instead of reading on
            peer.close()
    print(f"\n4 GiB PDUs: {sent} MiB of 600 accepted by the socket before the abort; RSS grew {rss.growth:.1f} MiB")
    assert sent < 600
    assert rss.growth < 64
    assert metric(daemon, "sonoshot_connections_refused_total", reason="pdu-too-large") == before + 9
    assert echo("127.0.0.1", daemon.port, daemon.aet)


def test_an_idle_association_ends_at_the_network_timeout(tmp_path):
    with Daemon(tmp_path, {"network": {"network_timeout_s": 3.0, "request_timeout_s": 1.0}}) as daemon:
        with RawPeer(daemon.port, "127.0.0.2") as peer:
            assert peer.associate()[0] == A_ASSOCIATE_AC
            started = time.monotonic()
            answer = peer.read_pdu(timeout=10)
            waited = time.monotonic() - started
            assert answer is not None and answer[0] == A_ABORT, answer
            assert 2.5 < waited < 6, waited  # not at request_timeout_s (1 s): it had associated
        assert "idle for network.network_timeout_s" in daemon.log()


# -- a 1 GiB instance --------------------------------------------------------------------------

FRAME_ROWS, FRAME_COLUMNS = 480, 640
FRAMES = 1166  # 1166 x 480 x 640 x 3 bytes = 1.0006 GiB of pixel data


def write_large_instance(path: Path) -> tuple[str, int]:
    """A 1 GiB RGB multi-frame instance written frame by frame (never whole in memory); returns
    its SOP Instance UID and size."""
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundMultiFrameImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "US", "LARGE-1", "Large^Instance"
    ds.Rows, ds.Columns, ds.NumberOfFrames = FRAME_ROWS, FRAME_COLUMNS, FRAMES
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    header = io.BytesIO()
    ds.save_as(header, enforce_file_format=True)
    frame_bytes = FRAME_ROWS * FRAME_COLUMNS * 3
    frame = bytearray(bytes(range(256)) * (frame_bytes // 256))
    with open(path, "wb") as f:
        f.write(header.getvalue())
        f.write(b"\xe0\x7f\x10\x00OB\0\0" + (frame_bytes * FRAMES).to_bytes(4, "little"))
        for n in range(FRAMES):
            frame[:4] = n.to_bytes(4, "little")  # every frame different
            f.write(frame)
    return ds.SOPInstanceUID, path.stat().st_size


def _dataset_sha256(path: Path) -> str:
    """SHA-256 of a Part 10 file's dataset (after its file meta), read in chunks."""
    meta = pydicom.filereader.read_file_meta_info(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(132 + 12 + meta.FileMetaInformationGroupLength)
        while chunk := f.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.slow
def test_a_1_gib_instance_is_streamed_with_bounded_memory(tmp_path):
    require_binary("storescu")
    source = tmp_path / "large.dcm"
    sop, size = write_large_instance(source)
    assert size > 2**30
    with Daemon(tmp_path / "sonoshot", {"completion": {"quiet_period_s": 600}}) as daemon:
        with PeakRSS(daemon.process.pid) as rss:
            started = time.monotonic()
            result = subprocess.run(storescu_args(daemon.port, [source], calling_aet="LARGE", extra=()),
                                    env=DCMTK_ENV, capture_output=True, text=True, timeout=600)
            seconds = time.monotonic() - started
        assert acknowledged(result.stderr) == {source: "Success"}, result.stderr[-3000:]
        (path,) = daemon.query("select path from instances where sop_instance_uid = ?", sop)[0]
        stored = daemon.spool / path
        print(f"\n1 GiB instance: stored in {seconds:.1f} s; daemon RSS {rss.start:.0f} MiB -> peak "
              f"{rss.peak:.0f} MiB (+{rss.growth:.0f} MiB)")
        assert rss.growth < 256
        assert not list((daemon.spool / ".incoming").iterdir())
        stored_ds = pydicom.dcmread(stored, stop_before_pixels=True)
        assert stored_ds.SOPInstanceUID == sop and stored_ds.NumberOfFrames == FRAMES
        assert _dataset_sha256(stored) == _dataset_sha256(source)  # the dataset as sent, byte for byte
