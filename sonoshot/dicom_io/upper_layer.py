"""upper_layer.py
==============

What sonoshot changes in pynetdicom's upper layer for each connection it accepts. :func:`install`
runs from an ``EVT_CONN_OPEN`` handler, before the association's threads start, and touches only
that association's own objects (never pynetdicom's classes or globals):

PDU limits
    Each PDU's type and declared length are checked against the state before its body is read:
    before association only an A-ASSOCIATE-RQ of at most :data:`ASSOCIATE_RQ_LIMIT` bytes; after,
    P-DATA-TF up to the maximum length we advertised (``network.max_pdu_size``); release and
    abort PDUs of their fixed size. Anything else is refused: an A-ABORT, a log line, the
    ``sonoshot_connections_refused_total`` counter, and the connection closed. A PDU must arrive
    whole within the request deadline (before association) or ``network.network_timeout_s``.
Request deadline
    A connection must deliver its A-ASSOCIATE-RQ within ``network.request_timeout_s`` of being
    accepted (pynetdicom's ARTIM timer and ACSE wait are set to what is left of it); then the ACSE
    timeout is restored for the rest of the association.
DIMSE limits and streamed datasets
    A command set over :data:`COMMAND_LIMIT` or a non-C-STORE dataset over
    :data:`OTHER_DATASET_LIMIT` is refused. A C-STORE dataset that grows past
    ``network.stream_above_mb`` is moved to a ``.part`` file in the spool's ``.incoming`` and the
    rest of it is written there as it arrives (pynetdicom's own chunked-dataset path,
    ``Event.dataset_path``); the C-STORE handler makes that file durable in place.
C-STORE responses
    A C-STORE-RSP with only the usual elements (no Offending Element, no Error Comment) is
    encoded straight into its P-DATA value, the Implicit VR Little Endian command set PS3.7
    9.3.1.2 defines, byte for byte what pynetdicom's own encoder writes, without building
    a pydicom dataset twice (once for the group length); any other message goes through
    pynetdicom, as does every message while an ``EVT_DIMSE_SENT`` handler is bound.
Event-driven waiting
    pynetdicom polls: its DUL thread sleeps ``_run_loop_delay`` (1 ms) between zero-timeout
    ``select`` calls and its association reactor sleeps 1 ms between queue checks, which costs
    up to 2 ms per DIMSE message and CPU for every idle connection. Here the DUL blocks in
    ``select`` on the socket and a wake-up socket written when the association queues a PDU to
    send, and the reactor blocks on an event set when a DIMSE message or an ACSE primitive is
    queued for it. Both still wake every :data:`IDLE_WAKE_S` for pynetdicom's timers.

These replace private pynetdicom 3.0 methods and attributes on the association's instances:
``DULServiceProvider._read_pdu_data``, ``_is_transport_event``, ``_run_loop_delay``,
``to_provider_queue``, ``to_user_queue``; ``DIMSEServiceProvider.receive_primitive``, ``send_msg``, ``msg_queue``;
``Association._run_reactor``. setup.cfg pins pynetdicom to ``>=3.0.4,<3.1`` and
``tests/test_upper_layer.py`` fails if an upgrade changes what they rely on.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.pdu import (A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, A_RELEASE_RP,
                            A_RELEASE_RQ, P_DATA_TF)

from sonoshot.dicom_io.gate import ConnectionGate
from sonoshot.dicom_io.part10 import part10_header
from sonoshot.dicom_io.spool import Spool
from sonoshot.logs import RateLimitedLog

log = logging.getLogger(__name__)

#: Largest A-ASSOCIATE-RQ accepted: 128 presentation contexts of one 64-character abstract and
#: eight 64-character transfer syntaxes (79,360 bytes), a user information item at its largest
#: (65,539 bytes, room for a Kerberos or SAML user identity of 64 KiB) and the rest of the request
#: (about 150 KB in all) fit in it.
ASSOCIATE_RQ_LIMIT = 256 * 1024
#: A-RELEASE-RQ/RP and A-ABORT have a 4-byte body; a little slack for padding peers.
SMALL_PDU_LIMIT = 64
#: A DIMSE command set is a few hundred bytes.
COMMAND_LIMIT = 64 * 1024
#: Datasets of messages other than C-STORE (C-ECHO has none) are held in memory up to this.
OTHER_DATASET_LIMIT = 1024 * 1024
#: Free disk is checked every this many bytes of a streamed dataset.
DISK_CHECK_BYTES = 64 * 1024 * 1024
#: The DUL and the reactor wake this often when nothing happens (pynetdicom's timers, a kill).
IDLE_WAKE_S = 0.05
#: pynetdicom's DUL sleeps this long after an iteration without an event (and between checks
#: while another thread stops it); its default is 1 ms.
RUN_LOOP_DELAY_S = 0.0002
#: A-ABORT reasons, PS3.8 Table 9-26 (source: service provider).
ABORT_UNSPECIFIED, ABORT_UNRECOGNIZED_PDU, ABORT_UNEXPECTED_PDU, ABORT_INVALID_PARAMETER = 0x00, 0x01, 0x02, 0x06

_PDU_CLASSES = {0x01: (A_ASSOCIATE_RQ, "Evt6"), 0x02: (A_ASSOCIATE_AC, "Evt3"), 0x03: (A_ASSOCIATE_RJ, "Evt4"),
                0x04: (P_DATA_TF, "Evt10"), 0x05: (A_RELEASE_RQ, "Evt12"), 0x06: (A_RELEASE_RP, "Evt13"),
                0x07: (A_ABORT_RQ, "Evt16")}
_PDU_NAMES = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF",
              0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}


def _command_element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def _ui(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\0" if len(value) % 2 else value


def store_response_command(sop_class_uid: str, message_id: int, status: int, sop_instance_uid: str) -> bytes:
    """The encoded command set of a C-STORE-RSP (PS3.7 Table 9.3-2, Implicit VR Little Endian):
    group length, Affected SOP Class UID, Command Field 0x8001, Message ID Being Responded To,
    Command Data Set Type 0x0101 (none), Status, Affected SOP Instance UID."""
    body = b"".join((
        _command_element(0x0002, _ui(sop_class_uid)), _command_element(0x0100, struct.pack("<H", 0x8001)),
        _command_element(0x0120, struct.pack("<H", message_id)), _command_element(0x0800, struct.pack("<H", 0x0101)),
        _command_element(0x0900, struct.pack("<H", status)), _command_element(0x1000, _ui(sop_instance_uid))))
    return _command_element(0x0000, struct.pack("<L", len(body))) + body


def _plain_store_response(primitive: Any) -> bytes | None:
    """The command set of ``primitive`` if it is a C-STORE-RSP :func:`store_response_command` can
    encode (both UIDs, a status, no Offending Element or Error Comment), else None."""
    if type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.OffendingElement is not None or primitive.ErrorComment is not None:
        return None
    sop_class, sop_instance, status = (primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID,
                                       primitive.Status)
    if not sop_class or not sop_instance or not isinstance(status, int):
        return None
    return store_response_command(str(sop_class), primitive.MessageIDBeingRespondedTo, status, str(sop_instance))


@dataclass(frozen=True)
class Limits:
    """The per-connection limits (from ``[network]``)."""

    request_timeout_s: float
    max_pdu_size: int  # as advertised; 0: unlimited
    network_timeout_s: float | None
    acse_timeout_s: float | None
    stream_above_bytes: int
    min_free_mb: float


class Guard:
    """What every connection's hooks share: limits, the gate, the spool, the refusal counter."""

    def __init__(self, limits: Limits, gate: ConnectionGate, spool: Spool,
                 count_refusal: Callable[[str], None] = lambda _reason: None) -> None:
        self.limits, self.gate, self.spool = limits, gate, spool
        self.count_refusal = count_refusal
        self.warn = RateLimitedLog(log)


#: The attribute under which an association carries its :class:`Connection`: the two form a
#: reference cycle the garbage collector frees with the association (a mapping held here would
#: keep every association ever accepted alive).
_CONNECTION = "_sonoshot_connection"


def connection_of(assoc: Association) -> Connection | None:
    """The hooks installed on ``assoc``, if any."""
    return getattr(assoc, _CONNECTION, None)


class _Stalled(Exception):
    """The peer did not deliver a whole PDU in time."""


class _PeerGone(Exception):
    """The connection closed or failed while a PDU was read."""


class _SpoolFull(Exception):
    """Free disk fell under the watermark while a dataset was streamed."""


class _WakingQueue(queue.Queue):
    """A queue that calls ``wake`` after each put and can be closed: a blocked ``get`` on an empty,
    closed queue raises :class:`queue.Empty` at once."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake
        self._closed = False

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()

    def close(self) -> None:
        with self.not_empty:
            self._closed = True
            self.not_empty.notify_all()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        with self.not_empty:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._qsize():
                remaining = None if deadline is None else deadline - time.monotonic()
                if not block or self._closed or (remaining is not None and remaining <= 0):
                    raise queue.Empty
                self.not_empty.wait(remaining)
            item = self._get()
            self.not_full.notify()
            return item


class _SpillFile:
    """The open ``.part`` file of a streamed C-STORE dataset, in the shape pynetdicom's chunked
    path uses (``write``, ``file.flush``, ``name``, ``close``); counts bytes to check free disk."""

    def __init__(self, file: Any, path: Path, spool: Spool, min_free_mb: float) -> None:
        self.file, self.path, self.name = file, path, str(path)
        self.spool, self.min_free_mb = spool, min_free_mb
        self.written = 0
        self._checked_at = 0

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        while view:  # an unbuffered write may take less than it is given
            view = view[self.file.write(view):]
        written = memoryview(data).nbytes
        self.written += written
        if self.written - self._checked_at >= DISK_CHECK_BYTES:
            self._checked_at = self.written
            if self.spool.free_mb() < self.min_free_mb:
                raise _SpoolFull(f"free disk fell under storage.min_free_mb after {self.written} bytes")
        return written

    def close(self) -> None:
        self.file.close()

    def discard(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Connection:
    """One accepted connection's hooks (see the module notes)."""

    def __init__(self, assoc: Association, guard: Guard) -> None:
        self.assoc, self.guard = assoc, guard
        self.dul, self.dimse = assoc.dul, assoc.dimse
        self.peer = str(assoc.requestor.address)
        self.pending = True
        self.reactor_wake = threading.Event()
        self.dul_wake: tuple[socket.socket, socket.socket] | None = None
        self.request_deadline = guard.gate.attach(assoc)
        self._receive_primitive = self.dimse.receive_primitive
        self._send_msg = self.dimse.send_msg
        dul, dimse = self.dul, self.dimse
        dul._read_pdu_data = self.read_pdu
        dul._is_transport_event = self.transport_event
        dul._run_loop_delay = RUN_LOOP_DELAY_S
        dul.to_provider_queue = _WakingQueue(self.wake_dul)
        dul.to_user_queue = _WakingQueue(self.reactor_wake.set)
        dimse.msg_queue = _WakingQueue(self.reactor_wake.set)
        dimse.receive_primitive = self.receive_primitive
        dimse.send_msg = self.send_msg
        assoc._run_reactor = self.run_reactor
        assoc.acse_timeout = max(0.05, self.request_deadline - time.monotonic())

    # -- refusing ---------------------------------------------------------------------------

    def refuse(self, reason: str, detail: str, abort_reason: int | None = ABORT_UNSPECIFIED) -> None:
        """Count and log why, send an A-ABORT (unless ``abort_reason`` is None) and close the connection."""
        self.guard.count_refusal(reason)
        self.guard.warn.warning(reason, "connection from %s: %s; closed", self.peer, detail)
        self.discard_partial()
        sock = self.dul.socket
        if sock is None or sock.socket is None:
            return
        if abort_reason is not None:
            abort = A_ABORT_RQ()
            abort.source, abort.reason_diagnostic = 0x02, abort_reason
            sock.send(abort.encode())
        sock.close()  # queues Evt17: the state machine ends the association (A-P-ABORT indication)

    def discard_partial(self) -> None:
        """Delete the ``.part`` file of a C-STORE dataset that will not be completed."""
        message = self.dimse.message
        spill = getattr(message, "_data_set_file", None)
        if isinstance(spill, _SpillFile):
            spill.discard()

    # -- reading PDUs -----------------------------------------------------------------------

    def _deadline(self) -> float | None:
        if self.pending:  # the state machine may not even have left Sta1 yet
            return self.request_deadline
        timeout = self.guard.limits.network_timeout_s
        return None if timeout is None else time.monotonic() + timeout

    @staticmethod
    def _fill(sock: socket.socket, view: memoryview, deadline: float | None) -> None:
        got = 0
        while got < len(view):
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Stalled
                sock.settimeout(remaining)
            try:
                n = sock.recv_into(view[got:], len(view) - got)
            except TimeoutError:
                raise _Stalled from None
            except (OSError, ValueError):
                raise _PeerGone from None
            if not n:
                raise _PeerGone
            got += n

    def _limit(self, pdu_type: int, state: str) -> tuple[int | None, str]:
        associated = state not in ("Sta1", "Sta2")
        if pdu_type == 0x01:
            return (ASSOCIATE_RQ_LIMIT, "") if not associated else (None, "pdu-unexpected")
        if pdu_type == 0x04:
            return (self.guard.limits.max_pdu_size or 0xFFFFFFFF, "") if associated else (None, "pdu-unexpected")
        if pdu_type in (0x05, 0x06, 0x07):
            return SMALL_PDU_LIMIT, ""
        return None, "pdu-unexpected" if pdu_type in (0x02, 0x03) else "pdu-unknown-type"

    def read_pdu(self) -> None:
        """Replaces ``DULServiceProvider._read_pdu_data``: read one PDU within the limits, decode it,
        queue its state machine event (as pynetdicom does), or refuse it."""
        dul = self.dul
        sock = dul.socket.socket if dul.socket is not None else None
        if sock is None:
            dul.event_queue.put("Evt17")
            return
        state = dul.state_machine.current_state
        deadline = self._deadline()
        header = bytearray(6)
        try:
            self._fill(sock, memoryview(header), deadline)
        except _PeerGone:
            dul.event_queue.put("Evt17")
            return
        except _Stalled:
            self.refuse("pdu-timeout", "no whole PDU header in time", None)
            return
        pdu_type, _, length = struct.unpack(">BBL", header)
        limit, reason = self._limit(pdu_type, state)
        name = _PDU_NAMES.get(pdu_type, f"type 0x{pdu_type:02X}")
        if limit is None:
            where = "before association" if state in ("Sta1", "Sta2") else "in an association"
            self.refuse(reason, f"{'unknown PDU' if reason == 'pdu-unknown-type' else 'unexpected'} {name} {where}",
                        ABORT_UNRECOGNIZED_PDU if reason == "pdu-unknown-type" else ABORT_UNEXPECTED_PDU)
            return
        if length > limit:
            self.refuse("pdu-too-large", f"{name} PDU declares {length} bytes, the limit is {limit}",
                        ABORT_INVALID_PARAMETER)
            return
        data = bytearray(6 + length)
        data[:6] = header
        try:
            self._fill(sock, memoryview(data)[6:], deadline)
        except _PeerGone:
            dul.event_queue.put("Evt17")
            return
        except _Stalled:
            self.refuse("pdu-timeout", f"{name} PDU of {length} bytes not received in time")
            return
        if self.guard.limits.network_timeout_s is not None:
            sock.settimeout(self.guard.limits.network_timeout_s)  # also bounds our sends to a peer that stops reading
        self._decode(bytes(data), pdu_type, name)

    def _decode(self, data: bytes, pdu_type: int, name: str) -> None:
        """As ``DULServiceProvider._decode_pdu``: events before and after decoding, then the FSM event."""
        assoc, dul = self.assoc, self.dul
        if assoc.get_handlers(evt.EVT_DATA_RECV):
            evt.trigger(assoc, evt.EVT_DATA_RECV, {"data": data})
        pdu_class, fsm_event = _PDU_CLASSES[pdu_type]
        pdu = pdu_class()
        try:
            pdu.decode(data)
            if pdu_type != 0x04:  # the state machine converts it next, outside any handler: an even
                pdu.to_primitive()  # presentation context ID or an A-ABORT source of 3 would end the DUL thread
        except Exception as exc:  # pynetdicom raises many types for malformed PDUs
            self.refuse("pdu-malformed", f"{name} PDU cannot be decoded ({type(exc).__name__})",
                        ABORT_INVALID_PARAMETER)
            return
        evt.trigger(assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
        dul.event_queue.put(fsm_event)
        dul._recv_pdu.put(pdu)

    # -- waiting ----------------------------------------------------------------------------

    def wake_dul(self) -> None:
        wake = self.dul_wake
        if wake is not None:
            with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
                wake[1].send(b"\0")

    def transport_event(self) -> bool:
        """Replaces ``DULServiceProvider._is_transport_event``: wait for data from the peer or a PDU
        to send, whichever comes first; True when an event was queued for the state machine."""
        dul = self.dul
        wrapper = dul.socket
        if dul.state_machine.current_state == "Sta13":  # as pynetdicom: drain, then close
            if wrapper is not None and wrapper.ready:
                self.read_pdu()
            elif wrapper is not None:
                wrapper.close()
            return True
        sock = wrapper.socket if wrapper is not None else None
        if sock is None:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            self.read_pdu()
            return True
        wake = self.dul_wake
        waiting = [sock] if wake is None else [sock, wake[0]]
        if dul.event_queue.qsize() or dul.to_provider_queue.qsize():
            timeout = 0.0  # the state machine has work queued: only look
        elif wake is not None or dul.state_machine.current_state == "Sta2":
            timeout = IDLE_WAKE_S
        else:
            timeout = 0.001  # no wake-up socket yet (the A-ASSOCIATE response is being prepared)
        try:
            ready, _, _ = select.select(waiting, [], [], timeout)
        except (OSError, ValueError):
            dul.event_queue.put("Evt17")
            return False
        if sock in ready:
            self.read_pdu()
            return True
        if wake is not None and wake[0] in ready:
            with contextlib.suppress(OSError):
                wake[0].recv(4096)
            return dul._process_recv_primitive()
        return False

    # -- DIMSE ------------------------------------------------------------------------------

    def receive_primitive(self, primitive: Any) -> None:
        """Wraps ``DIMSEServiceProvider.receive_primitive``: refuse what cannot be decoded or grows
        too large, and stream a large C-STORE dataset to the spool."""
        try:
            self._receive_primitive(primitive)
        except _SpoolFull as exc:
            self.refuse("disk-full", f"C-STORE dataset aborted: {exc}")
            return
        except Exception as exc:  # pydicom and pynetdicom raise many types for a malformed message
            self.refuse("dimse-malformed", f"a DIMSE message cannot be decoded ({type(exc).__name__})")
            return
        message = self.dimse.message
        if message is None or isinstance(message._data_set_file, _SpillFile):
            return
        if message.encoded_command_set.tell() > COMMAND_LIMIT:
            self.refuse("dimse-too-large", f"a DIMSE command set over {COMMAND_LIMIT} bytes")
        elif isinstance(message, C_STORE_RQ):
            if message.data_set.tell() > self.guard.limits.stream_above_bytes:
                self._spill(message)
        elif message.data_set.tell() > OTHER_DATASET_LIMIT:
            self.refuse("dimse-too-large", f"a {type(message).__name__} dataset over {OTHER_DATASET_LIMIT} bytes")

    def send_msg(self, primitive: Any, context_id: int) -> None:
        """Wraps ``DIMSEServiceProvider.send_msg``: a plain C-STORE-RSP goes out as one P-DATA
        encoded here (see the module notes); anything else as pynetdicom sends it."""
        command = None if self.assoc.get_handlers(evt.EVT_DIMSE_SENT) else _plain_store_response(primitive)
        max_pdu = self.dimse.maximum_pdu_size
        if command is None or (max_pdu and len(command) + 6 > max_pdu):
            self._send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
        self.dul.send_pdu(pdata)

    def _spill(self, message: C_STORE_RQ) -> None:
        """Move a growing C-STORE dataset from memory to a ``.part`` file; the rest follows it there."""
        spool = self.guard.spool
        try:
            contexts = {cx.context_id: cx for cx in self.assoc.accepted_contexts}
            command = message.command_set
            head = part10_header(str(command.AffectedSOPClassUID), str(command.AffectedSOPInstanceUID),
                                 str(contexts[message.context_id].transfer_syntax[0]))
        except Exception as exc:  # a command set pydicom cannot encode back, an unknown context
            self.refuse("dimse-malformed", f"a C-STORE request whose file meta cannot be built ({type(exc).__name__})")
            return
        file, path = spool.open_incoming()
        spill = _SpillFile(file, path, spool, self.guard.limits.min_free_mb)
        try:
            file.write(head)
            spill.write(message.data_set.getbuffer())
        except (OSError, _SpoolFull) as exc:
            spill.discard()
            self.refuse("disk-full", f"C-STORE dataset could not be streamed to the spool: {exc}")
            return
        message.data_set = BytesIO()
        message._data_set_file, message._data_set_path = spill, path

    # -- the association reactor ------------------------------------------------------------

    def run_reactor(self) -> None:
        """Replaces ``Association._run_reactor``: the same checks, in the same order, run when a
        DIMSE message or ACSE primitive arrives (or every :data:`IDLE_WAKE_S`) instead of every 1 ms."""
        assoc = self.assoc
        assoc._is_paused = False
        try:
            while not assoc._kill:
                self.reactor_wake.wait(IDLE_WAKE_S)
                self.reactor_wake.clear()
                assoc._is_paused = True
                assoc._reactor_checkpoint.wait()
                assoc._is_paused = False
                while True:
                    context_id, msg = assoc.dimse.get_msg(block=False)
                    if msg is None:
                        break
                    assoc._serve_request(msg, context_id)
                if assoc.is_established and assoc.acse.is_release_requested():
                    # Released before the A-RELEASE-RP goes out: the DUL sends it at once, and the
                    # peer's close (EVT_CONN_CLOSE) may come before EVT_RELEASED.
                    assoc.is_released, assoc.is_established = True, False
                    assoc.acse.send_release(is_response=True)
                    evt.trigger(assoc, evt.EVT_RELEASED, {})
                    return
                if assoc.acse.is_aborted():
                    assoc.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires, as pynetdicom does
                    assoc.is_aborted, assoc.is_established = True, False
                    evt.trigger(assoc, evt.EVT_ABORTED, {})
                    return
                if not assoc.dul.is_alive():
                    return
                if assoc.dul.idle_timer_expired():
                    self.guard.warn.warning("network-timeout", "association from %s idle for network.network_"
                                            "timeout_s: aborted", self.peer)
                    assoc.abort()
                    return
        finally:
            assoc.kill()
            self.close_wake()
            self._discard_unserved()

    def _discard_unserved(self) -> None:
        """Streamed datasets of C-STORE requests left unserved in the queue when the association ended."""
        while True:
            try:
                _context_id, msg = self.dimse.msg_queue.get(block=False)
            except queue.Empty:
                return
            spill = getattr(msg, "_dataset_file", None)
            if isinstance(spill, _SpillFile):
                spill.discard()

    # -- lifecycle (event handlers) ---------------------------------------------------------

    def requested(self) -> None:
        """EVT_REQUESTED: the A-ASSOCIATE-RQ arrived in time; no longer pending."""
        self.pending = False
        self.guard.gate.requested(self.assoc)
        self.assoc.acse_timeout = self.guard.limits.acse_timeout_s

    def established(self) -> None:
        """EVT_ACCEPTED: from now on the DUL waits on a wake-up socket as well as the peer's."""
        self.dul_wake = socket.socketpair()
        for end in self.dul_wake:
            end.setblocking(False)
        self.wake_dul()  # the A-ASSOCIATE-AC may already be queued

    def closed(self) -> None:
        """EVT_CONN_CLOSE: drop a partial dataset; a connection that never sent its request is counted
        and its association thread let go at once."""
        self.discard_partial()
        if not self.pending:
            return
        self.pending = False
        counted = self.guard.gate.closed(self.assoc)  # False: the gate closed it (and counted why)
        if counted and time.monotonic() >= self.request_deadline - 0.01:
            self.guard.count_refusal("request-timeout")
            self.guard.warn.warning("request-timeout", "connection from %s closed: no A-ASSOCIATE-RQ within "
                                    "network.request_timeout_s", self.peer)
        self.dul.to_user_queue.close()

    def close_wake(self) -> None:
        wake, self.dul_wake = self.dul_wake, None
        for end in wake or ():
            end.close()


def handle_conn_open(event: evt.Event, guard: Guard) -> None:
    """EVT_CONN_OPEN: install the hooks on the new association (see the module notes). If that
    fails the connection is closed: it is never served without its limits."""
    try:
        setattr(event.assoc, _CONNECTION, Connection(event.assoc, guard))
    except Exception:
        log.exception("cannot install the connection limits; closing the connection from %s", event.address[0])
        with contextlib.suppress(Exception):
            event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
        raise


def handle_requested(event: evt.Event) -> None:
    """EVT_REQUESTED: see :meth:`Connection.requested`."""
    if (connection := connection_of(event.assoc)) is not None:
        connection.requested()


def handle_accepted(event: evt.Event) -> None:
    """EVT_ACCEPTED: see :meth:`Connection.established`."""
    if (connection := connection_of(event.assoc)) is not None:
        connection.established()


def handle_conn_close(event: evt.Event) -> None:
    """EVT_CONN_CLOSE: see :meth:`Connection.closed`."""
    if (connection := connection_of(event.assoc)) is not None:
        connection.closed()


def handlers(guard: Guard) -> list[tuple]:
    """The event handlers that install and drive the hooks, for ``start_server(evt_handlers=...)``."""
    return [(evt.EVT_CONN_OPEN, handle_conn_open, [guard]), (evt.EVT_REQUESTED, handle_requested),
            (evt.EVT_ACCEPTED, handle_accepted), (evt.EVT_CONN_CLOSE, handle_conn_close)]

