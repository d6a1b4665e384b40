"""The connection limits and pynetdicom hooks, against the storage SCP started in this process.

sonoshot.dicom_io.upper_layer replaces private pynetdicom 3.0 methods on each association; the
first tests fail when an upgrade removes what they rely on, the rest when the hooks stop having
their effect (a PDU refused from its header, no polling while idle, a request deadline, caps on
pending connections, datasets streamed to the spool, no deep copy per connection).
"""

from __future__ import annotations

import gc
import inspect
import io
import os
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt, fsm
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import UltrasoundMultiFrameImageStorage, Verification
from pynetdicom.transport import AssociationServer, RequestHandler

from sonoshot.config import NetworkConfig, TLSConfig
from sonoshot.db.store import Store
from sonoshot.dicom_io import spool as spool_module
from sonoshot.dicom_io import upper_layer
from sonoshot.dicom_io.gate import ConnectionGate
from sonoshot.dicom_io.receive import Receiver, start_scp
from sonoshot.dicom_io.spool import Spool
from tests.pki import make_pki
from tests.peers import wait_for
from tests.rawpeer import A_ABORT, A_ASSOCIATE_AC, RELEASE_RQ, RawPeer, associate_rq, c_store_rq, p_data, pdu
from tests.util import free_port, require_binary


class SCP:
    """The storage SCP in this process, on a free port, with its refusals recorded."""

    def __init__(self, root: Path, **network: object) -> None:
        self.store = Store(f"sqlite:///{root / 'db.sqlite'}")
        self.store.migrate()
        self.spool = Spool(root / "spool")
        self.refusals: list[str] = []
        self.network = NetworkConfig(port=free_port(), **network)
        self.server = start_scp(self.network, Receiver(self.spool, self.store, 0, count_refusal=self.refusals.append))
        self.port = self.network.port

    def associations(self) -> list[Association]:
        return [a for a in self.server.active_associations if a.is_established]

    def stop(self) -> None:
        self.server.shutdown()
        self.store.dispose()


@pytest.fixture
def scp(tmp_path):
    started: list[SCP] = []

    def start(**network: object) -> SCP:
        started.append(SCP(tmp_path / f"scp{len(started)}", **network))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def _echo(port: int, source: str = "127.0.0.1") -> int | None:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="SONOSHOT", bind_address=(source, 0))
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


# -- what the hooks rely on in pynetdicom ----------------------------------------------------

def test_pynetdicom_is_the_version_the_hooks_were_written_for():
    major, minor, patch = (int(p) for p in pynetdicom.__version__.split(".")[:3])
    assert (3, 0, 4) <= (major, minor, patch) < (3, 1, 0), "re-check sonoshot.dicom_io.upper_layer, then the pin"


def test_the_private_members_the_hooks_replace_exist():
    assoc = Association(AE(), "acceptor")
    dul, dimse = assoc.dul, assoc.dimse
    for name in ("_read_pdu_data", "_is_transport_event", "_process_recv_primitive", "_recv_pdu"):
        assert hasattr(dul, name), name
    assert dul._run_loop_delay == 0.001 and dul.state_machine.current_state == "Sta1"
    assert all(hasattr(q, "put") for q in (dul.to_provider_queue, dul.to_user_queue, dul.event_queue, dimse.msg_queue))
    for name in ("_run_reactor", "_serve_request", "_reactor_checkpoint", "_is_paused", "_kill"):
        assert hasattr(assoc, name), name
    message = DIMSEMessage()
    assert message._data_set_file is None and message._data_set_path is None
    # The DUL loop reads through _is_transport_event, which reads through _read_pdu_data, and
    # sleeps _run_loop_delay; DT-2 hands P-DATA to dimse.receive_primitive; the reactor loop is
    # _run_reactor; the storage SCP unlinks a chunked dataset's file after the handler.
    loop = inspect.getsource(DULServiceProvider.run_reactor)
    assert "self._is_transport_event()" in loop and "time.sleep(self._run_loop_delay)" in loop
    assert "self._read_pdu_data()" in inspect.getsource(DULServiceProvider._is_transport_event)
    assert "dul.assoc.dimse.receive_primitive(" in inspect.getsource(fsm.DT_2)
    assert "self._run_reactor()" in inspect.getsource(Association.run_reactor)
    assert "self.dimse.send_msg(rsp, cx_id)" in inspect.getsource(StorageServiceClass.SCP)
    assert "os.unlink(req._dataset_file.name)" in inspect.getsource(StorageServiceClass.SCP)
    assert "deepcopy(self.server.contexts)" in inspect.getsource(RequestHandler._create_association)
    assert "gc.collect()" in inspect.getsource(AssociationServer.service_actions)  # what GuardedServer skips


def test_each_connection_gets_the_hooks_and_shares_the_contexts(scp):
    server = scp()
    with RawPeer(server.port) as peer:
        assert peer.associate()[0] == A_ASSOCIATE_AC
        (assoc,) = wait_for(server.associations, what="the association")
        dul = assoc.dul
        assert dul._read_pdu_data.__func__ is upper_layer.Connection.read_pdu
        assert dul._is_transport_event.__func__ is upper_layer.Connection.transport_event
        assert assoc._run_reactor.__func__ is upper_layer.Connection.run_reactor
        assert assoc.dimse.send_msg.__func__ is upper_layer.Connection.send_msg
        assert dul._run_loop_delay == upper_layer.RUN_LOOP_DELAY_S
        assert assoc.acceptor.supported_contexts is server.server.contexts  # not deep-copied
        peer.send(RELEASE_RQ)


def test_the_hooks_run_on_pynetdicom_threads(scp):
    """Every PDU is read by our reader and every message served from our reactor."""
    server = scp()
    seen: dict[str, set[str]] = {"pdu": set(), "echo": set()}

    def frames() -> set[str]:
        return {f"{Path(f.filename).name}:{f.function}" for f in inspect.stack()}

    server.server.bind(evt.EVT_PDU_RECV, lambda event: seen["pdu"].update(frames()))
    server.server.bind(evt.EVT_C_ECHO, lambda event: seen["echo"].update(frames()) or 0x0000)
    assert _echo(server.port) == 0x0000
    assert {"upper_layer.py:read_pdu", "upper_layer.py:transport_event"} <= seen["pdu"]
    assert "upper_layer.py:run_reactor" in seen["echo"]


# -- C-STORE responses --------------------------------------------------------------------

def _pynetdicom_command(rsp: C_STORE, max_pdu: int = 16384) -> list[bytes]:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    return [pdata.presentation_data_value_list[0][1] for pdata in message.encode_msg(1, max_pdu)]


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xC210, 0xB007])
@pytest.mark.parametrize("sop_instance", ["1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.12"])
def test_a_plain_store_response_is_what_pynetdicom_encodes(status, sop_instance):
    rsp = C_STORE()
    rsp.MessageID = rsp.MessageIDBeingRespondedTo = 65535
    rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID, rsp.Status = UltrasoundMultiFrameImageStorage, sop_instance, status
    assert _pynetdicom_command(rsp) == [b"\x03" + upper_layer._plain_store_response(rsp)]


def test_other_store_responses_go_through_pynetdicom():
    rsp = C_STORE()
    rsp.MessageID = rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID, rsp.Status = UltrasoundMultiFrameImageStorage, "1.2.3", 0xC000
    rsp.ErrorComment = "cannot understand"
    assert upper_layer._plain_store_response(rsp) is None
    request = C_STORE()
    request.MessageID = 7
    assert upper_layer._plain_store_response(request) is None  # a request, not a response


def test_store_responses_reach_a_dcmtk_peer_and_a_sent_handler_sees_them(scp, tmp_path, monkeypatch):
    """The responses encoded here are read by DCMTK's storescu (every status checked), and an
    EVT_DIMSE_SENT handler, which needs pynetdicom's message objects, turns the shortcut off."""
    require_binary("storescu")
    monkeypatch.setattr(pynetdicom._config, "LOG_HANDLER_LEVEL", "none")  # as the daemon runs: no debug handlers
    server = scp()
    source = Path(get_testdata_file("CT_small.dcm", download=False))
    files = []
    for n in range(3):
        ds = pydicom.dcmread(source)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        files.append(tmp_path / f"{n}.dcm")
        ds.save_as(files[-1])
    sent: list[str] = []
    encoded: list[int] = []
    real = upper_layer.store_response_command
    monkeypatch.setattr(upper_layer, "store_response_command", lambda *args: encoded.append(args[2]) or real(*args))

    def on_sent(event: evt.Event) -> None:
        sent.append(type(event.message).__name__)

    server.server.bind(evt.EVT_DIMSE_SENT, on_sent)
    run = subprocess.run(["storescu", "-aec", "SONOSHOT", "127.0.0.1", str(server.port), str(files[0])],
                         env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert sent == ["C_STORE_RSP"] and encoded == []
    server.server.unbind(evt.EVT_DIMSE_SENT, on_sent)
    run = subprocess.run(["storescu", "-aec", "SONOSHOT", "127.0.0.1", str(server.port), *map(str, files[1:])],
                         env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert sent == ["C_STORE_RSP"] and encoded == [0x0000, 0x0000]  # these two took the shortcut
    assert all(server.store.has_instance(str(pydicom.dcmread(f).SOPInstanceUID)) for f in files)


def test_ended_connections_are_freed(scp):
    """Nothing keeps an ended connection's association (and its hooks) alive."""
    server = scp()
    for n in range(30):
        with RawPeer(server.port) as peer:
            if n % 2:
                peer.send(pdu(0x09, b"\0" * 10))  # refused before association
            else:
                assert peer.associate()[0] == A_ASSOCIATE_AC
                peer.send(RELEASE_RQ)
            assert peer.closed_by_peer(5) is not None
    wait_for(lambda: not [t for t in threading.enumerate() if isinstance(t, Association)], timeout=10,
             what="the association threads to end")
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, (Association, upper_layer.Connection))]
    assert len(alive) <= 2, f"{len(alive)} associations or connections still referenced"


def test_an_idle_association_does_not_poll(scp):
    """pynetdicom's own loops run about 1,000 times a second each; ours wake every IDLE_WAKE_S."""
    server = scp()
    with RawPeer(server.port) as peer:
        assert peer.associate()[0] == A_ASSOCIATE_AC
        (assoc,) = wait_for(server.associations, what="the association")
        counts = {"dul": 0, "reactor": 0}
        dul_check, reactor_check = assoc.dul._process_recv_primitive, assoc.dimse.get_msg

        def dul_iteration():
            counts["dul"] += 1
            return dul_check()

        def reactor_iteration(block=False):
            counts["reactor"] += 1
            return reactor_check(block)

        assoc.dul._process_recv_primitive, assoc.dimse.get_msg = dul_iteration, reactor_iteration
        time.sleep(1.0)
        peer.send(RELEASE_RQ)
    limit = 3 / upper_layer.IDLE_WAKE_S
    assert 0 < counts["dul"] <= limit and 0 < counts["reactor"] <= limit, counts


# -- PDU limits ------------------------------------------------------------------------------

def _even_context_id(rq: bytes) -> bytes:
    """The A-ASSOCIATE-RQ with its first presentation context ID made even (pynetdicom encodes no such thing)."""
    application_context = 6 + 68
    assert rq[application_context] == 0x10
    context = application_context + 4 + int.from_bytes(rq[application_context + 2:application_context + 4], "big")
    assert rq[context] == 0x20 and rq[context + 4] == 1
    return rq[:context + 4] + b"\x02" + rq[context + 5:]


@pytest.mark.parametrize(("data", "reason", "abort_reason"), [
    (pdu(0x01, b"", declared=2**32 - 1), "pdu-too-large", 0x06),  # a 4 GiB A-ASSOCIATE-RQ
    (pdu(0x01, b"", declared=256 * 1024 + 1), "pdu-too-large", 0x06),
    (pdu(0x04, b"\0" * 10), "pdu-unexpected", 0x02),  # P-DATA before association
    (pdu(0x02, b"\0" * 10), "pdu-unexpected", 0x02),  # an A-ASSOCIATE-AC sent to the acceptor
    (pdu(0x09, b"\0" * 10), "pdu-unknown-type", 0x01),
    (pdu(0x05, b"", declared=10**6), "pdu-too-large", 0x06),  # A-RELEASE-RQ is 4 bytes long
    (pdu(0x01, b"\xff" * 68), "pdu-malformed", 0x06),
    (_even_context_id(associate_rq()), "pdu-malformed", 0x06),
    (pdu(0x07, b"\0\0\x05\x00"), "pdu-malformed", 0x06),  # an A-ABORT from source 5
], ids=["rq-4GiB", "rq-over-256KiB", "p-data-first", "ac-to-acceptor", "unknown-type", "huge-release", "garbage-rq",
        "even-context-id", "abort-source-5"])
def test_a_bad_pdu_before_association_is_refused_from_its_header(scp, data, reason, abort_reason):
    server = scp()
    with RawPeer(server.port) as peer:
        started = time.monotonic()
        peer.send(data)
        answer = peer.read_pdu(timeout=5)
        assert answer is not None and answer[0] == A_ABORT and answer[1][2:4] == bytes([0x02, abort_reason]), answer
        assert peer.closed_by_peer(5) is not None
        assert time.monotonic() - started < 3
    wait_for(lambda: reason in server.refusals, timeout=5, what=f"a {reason} refusal")


def test_a_huge_p_data_in_an_association_is_refused_from_its_header(scp):
    server = scp(max_pdu_size=65536)
    with RawPeer(server.port) as peer:
        assert peer.associate()[0] == A_ASSOCIATE_AC
        assert peer.send(pdu(0x04, b"", declared=65537))
        answer = peer.read_pdu(timeout=5)
        assert answer is not None and answer[0] == A_ABORT and answer[1][3] == 0x06
    wait_for(lambda: "pdu-too-large" in server.refusals, timeout=5, what="the refusal")
    assert _echo(server.port) == 0x0000


def test_a_pdu_that_stalls_is_closed_at_the_request_deadline(scp):
    server = scp(request_timeout_s=0.5)
    for data in (b"", b"\x01\x00\x00", associate_rq()[:40]):  # nothing, half a header, half a request
        with RawPeer(server.port) as peer:
            peer.send(data)
            closed = peer.closed_by_peer(5)
            assert closed is not None and 0.4 < closed < 2.5, (data, closed)
    assert _echo(server.port) == 0x0000


def test_a_fragmented_command_set_cannot_grow_without_bound(scp):
    server = scp()
    with RawPeer(server.port) as peer:
        assert peer.associate()[0] == A_ASSOCIATE_AC
        fragment = p_data((1, 0x01, b"\0" * 16000))  # command, not the last fragment
        for _ in range(6):
            if not peer.send(fragment):
                break
        assert peer.closed_by_peer(5) is not None
    wait_for(lambda: "dimse-too-large" in server.refusals, timeout=5, what="the refusal")


# -- pending connections ---------------------------------------------------------------------

def test_pending_connections_are_capped_per_address_and_in_total(scp):
    server = scp(max_pending_per_address=3, max_pending=5, request_timeout_s=3.0)
    held = [RawPeer(server.port, "127.0.0.2") for _ in range(3)]
    with RawPeer(server.port, "127.0.0.2") as fourth:
        assert fourth.closed_by_peer(1.0) is not None  # closed at once: its address has 3 pending
    held += [RawPeer(server.port, "127.0.0.3") for _ in range(2)]
    wait_for(lambda: server.server.gate.pending() == 5, timeout=5, what="5 pending connections")
    with RawPeer(server.port, "127.0.0.3") as sixth:  # 5 in all, none a second old, its address not the least
        assert sixth.closed_by_peer(0.5) is not None
    assert server.refusals.count("pending-per-address") == 1 and server.refusals.count("pending-total") == 1
    # A sender from an address with nothing pending takes the place of the busiest address's oldest.
    assert _echo(server.port, "127.0.0.4") == 0x0000
    assert server.refusals.count("pending-evicted") == 1 and server.server.gate.pending() == 4
    assert held[0].closed_by_peer(1.0) is not None
    for peer in held[1:]:  # the others time out
        closed = peer.closed_by_peer(5.0)
        assert closed is not None, "still open after the request timeout"
    wait_for(lambda: server.refusals.count("request-timeout") == 4, timeout=5, what="4 request timeouts counted")
    for peer in held:
        peer.close()


def test_at_the_cap_an_old_pending_connection_makes_room(scp):
    server = scp(max_pending_per_address=1, max_pending=3, request_timeout_s=4.0)
    held = [RawPeer(server.port, f"127.0.0.{n}") for n in (2, 3, 4)]
    wait_for(lambda: server.server.gate.pending() == 3, timeout=5, what="3 pending connections")
    assert _echo(server.port, "127.0.0.5") is None  # every address holds one, none is a second old
    time.sleep(1.0)
    assert _echo(server.port, "127.0.0.5") == 0x0000  # the oldest has waited a second: it makes room
    assert server.refusals.count("pending-evicted") == 1
    for peer in held:
        peer.close()


def test_pending_connections_do_not_take_association_slots(scp):
    server = scp(max_associations=1)
    held = [RawPeer(server.port, "127.0.0.2") for _ in range(3)]
    try:
        wait_for(lambda: server.server.gate.pending() == 3, timeout=5, what="3 pending connections")
        assert _echo(server.port) == 0x0000
    finally:
        for peer in held:
            peer.close()


def test_the_gate_checks_its_arguments():
    with pytest.raises(ValueError, match="max_per_address"):
        ConnectionGate(0, 5, 1.0)
    with pytest.raises(ValueError, match="max_total"):
        ConnectionGate(5, 4, 1.0)
    with pytest.raises(ValueError, match="request_timeout_s"):
        ConnectionGate(1, 1, 0)


def test_a_silent_tls_peer_does_not_stall_the_accept_loop(scp, tmp_path):
    require_binary("openssl")
    pki = make_pki(tmp_path / "pki")
    server = scp(request_timeout_s=5.0, tls=TLSConfig(certificate=str(pki / "server.pem"),
                                                      private_key=str(pki / "server.key"),
                                                      ca_certificate=str(pki / "ca.pem")))
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    with RawPeer(server.port, "127.0.0.2"):  # connects, never says hello
        ae = AE(ae_title="TLSSCU")
        ae.add_requested_context(Verification)
        started = time.monotonic()
        assoc = ae.associate("127.0.0.1", server.port, ae_title="SONOSHOT", tls_args=(context, "127.0.0.1"))
        assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert time.monotonic() - started < 3


# -- streamed datasets -----------------------------------------------------------------------

def _large_instance(megabytes: int) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "US", "STREAM-1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 256, 256, 1, 8, 8, 7
    ds.PhotometricInterpretation, ds.PixelRepresentation = "MONOCHROME2", 0
    ds.NumberOfFrames = megabytes * 16
    ds.PixelData = bytes(range(256)) * (256 * ds.NumberOfFrames)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_a_large_dataset_is_streamed_to_the_spool(scp):
    server = scp(stream_above_mb=1)
    ds = _large_instance(3)
    ae = AE(ae_title="STREAMER")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    adopted: list[str] = []
    adopt = server.spool.adopt
    server.spool.adopt = lambda relative, part: adopted.append(relative) or adopt(relative, part)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="SONOSHOT")
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    stored = server.spool.root / server.spool.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                              ds.SOPInstanceUID)
    assert pydicom.dcmread(stored).PixelData == ds.PixelData
    assert not list(server.spool.incoming.iterdir())
    assert server.store.has_instance(ds.SOPInstanceUID)
    assert adopted == [stored.relative_to(server.spool.root).as_posix()]  # it came as a file, not in memory


def test_a_stream_cut_short_leaves_no_part_file(scp):
    server = scp(stream_above_mb=1)
    sop = generate_uid()
    with RawPeer(server.port) as peer:
        answer = peer.associate(associate_rq(contexts=((UltrasoundMultiFrameImageStorage, (ExplicitVRLittleEndian,)),)))
        assert answer[0] == A_ASSOCIATE_AC
        peer.send(p_data((1, 0x03, c_store_rq(UltrasoundMultiFrameImageStorage, sop))))
        for _ in range(40):  # 2.5 MB of dataset fragments, never the last one
            peer.send(p_data((1, 0x00, b"\0" * 65000)))
        wait_for(lambda: list(server.spool.incoming.iterdir()), timeout=5, what="the .part file")
        peer.send(pdu(0x07, b"\0\0\0\0"))  # A-ABORT mid-message
    wait_for(lambda: not list(server.spool.incoming.iterdir()), timeout=5, what="the .part file to go")
    assert not server.store.has_instance(sop)


# -- group commit of folder fsyncs -----------------------------------------------------------

def test_concurrent_renames_share_folder_fsyncs(tmp_path, monkeypatch):
    calls: list[Path] = []
    real = spool_module.fsync_dir

    def slow_fsync(path: Path) -> None:
        calls.append(path)
        time.sleep(0.02)  # a slow disk, so that callers pile up behind a running fsync
        real(path)

    monkeypatch.setattr(spool_module, "fsync_dir", slow_fsync)
    spool = Spool(tmp_path / "spool")
    done: list[int] = []

    def put(n: int) -> None:
        spool.put(f"1.2/3.4/{n}.dcm", io.BytesIO(b"x" * 100).getbuffer())
        done.append(n)

    spool.put("1.2/3.4/0.dcm", b"first")  # the folders exist (and were made durable) before the race
    calls.clear()
    threads = [threading.Thread(target=put, args=(n,)) for n in range(1, 17)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(done) == list(range(1, 17))
    assert len(calls) < 16 and set(map(Path, calls)) == {tmp_path / "spool" / "1.2" / "3.4"}
    assert sorted(p.name for p in (tmp_path / "spool/1.2/3.4").iterdir()) == sorted(f"{n}.dcm" for n in range(17))


def test_new_folders_are_made_durable(tmp_path, monkeypatch):
    calls: list[Path] = []
    real = spool_module.fsync_dir
    monkeypatch.setattr(spool_module, "fsync_dir", lambda path: calls.append(path) or real(path))
    spool = Spool(tmp_path / "spool")
    spool.put("1.2/3.4/5.dcm", b"data")
    root = tmp_path / "spool"
    assert list(map(Path, calls)) == [root, root / "1.2", root / "1.2" / "3.4"]
