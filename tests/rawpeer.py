"""A raw-socket DICOM peer for the hostile-network tests.

In the manner of pynetdicom's own ``tests/parrot.py`` (a scripted acceptor), but as the
requestor: PDUs are built byte by byte (valid ones with pynetdicom's encoders, then broken as a
misconfigured modality or an attacker would), sent from a chosen loopback source address, and
what the daemon answers is read back as raw PDUs.
"""

from __future__ import annotations

import socket
import struct
import time

from pydicom import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AddressInformation

RELEASE_RQ = bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])
ABORT_RQ = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])
A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RP, A_ABORT = 0x02, 0x03, 0x04, 0x06, 0x07


def pdu(pdu_type: int, body: bytes, declared: int | None = None) -> bytes:
    """A PDU: type, reserved byte, 4-byte length (``declared`` if given, else the body's), body."""
    return struct.pack(">BBL", pdu_type, 0, len(body) if declared is None else declared) + body


def associate_rq(called: str = "SONOSHOT", calling: str = "RAWPEER",
                 contexts: tuple[tuple[str, tuple[str, ...]], ...] = ((Verification, (ImplicitVRLittleEndian,)),),
                 max_pdu: int = 16384) -> bytes:
    """A valid A-ASSOCIATE-RQ PDU, encoded by pynetdicom."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = calling, called
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 0)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 104)
    built = []
    for n, (abstract, syntaxes) in enumerate(contexts):
        context = build_context(abstract, list(syntaxes))
        context.context_id = 2 * n + 1
        built.append(context)
    primitive.presentation_context_definition_list = built
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    primitive.user_information = [length]
    return A_ASSOCIATE_RQ(primitive).encode()


def p_data(*pdvs: tuple[int, int, bytes]) -> bytes:
    """A P-DATA-TF PDU of ``(context_id, message_control_header, fragment)`` values."""
    body = b"".join(struct.pack(">LBB", len(data) + 2, context_id, header) + data for context_id, header, data in pdvs)
    return pdu(P_DATA_TF, body)


def command(**elements: object) -> bytes:
    """A DIMSE command set (Implicit VR Little Endian) with the group length pynetdicom expects."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    body = encode(ds, True, True)
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


def c_echo_rq(message_id: int = 1) -> bytes:
    return command(AffectedSOPClassUID=Verification, CommandField=0x0030, MessageID=message_id,
                   CommandDataSetType=0x0101)


def c_store_rq(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    return command(AffectedSOPClassUID=sop_class, CommandField=0x0001, MessageID=message_id, Priority=0,
                   CommandDataSetType=0x0000, AffectedSOPInstanceUID=sop_instance)


class RawPeer:
    """One TCP connection to the daemon from ``source`` (any address in 127.0.0.0/8)."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> bool:
        """Send ``data``; False when the daemon has already closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def _exactly(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except (TimeoutError, OSError):
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def read_pdu(self, timeout: float = 10.0) -> tuple[int, bytes] | None:
        """The next PDU as ``(type, body)``, or None if the connection closed or nothing came in time."""
        self.sock.settimeout(timeout)
        header = self._exactly(6)
        if header is None:
            return None
        pdu_type, _, length = struct.unpack(">BBL", header)
        body = self._exactly(length)
        return None if body is None else (pdu_type, body)

    def associate(self, rq: bytes | None = None) -> tuple[int, bytes]:
        """Send an A-ASSOCIATE-RQ and return the answer PDU.

        Raises
        ------
        ConnectionError
            If the daemon closed the connection instead of answering.
        """
        self.send(rq or associate_rq())
        answer = self.read_pdu()
        if answer is None:
            raise ConnectionError("no answer to the A-ASSOCIATE-RQ")
        return answer

    def closed_by_peer(self, timeout: float) -> float | None:
        """Seconds until the daemon closes the connection (reading and dropping what it sends),
        or None if it is still open after ``timeout``."""
        start = time.monotonic()
        while (left := timeout - (time.monotonic() - start)) > 0:
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(65536):
                    return time.monotonic() - start
            except TimeoutError:
                return None
            except OSError:
                return time.monotonic() - start
        return None

    def close(self) -> None:
        self.sock.close()
