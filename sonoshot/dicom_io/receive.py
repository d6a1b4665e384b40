"""receive.py
==========

The storage SCP. Handlers are small functions bound to pynetdicom events; the C-STORE handler
only persists and acknowledges: it walks the dataset's structure without decoding it (reading
only the UIDs and attributes the reply and the row need), writes the received bytes durably
(fsync of file and folder), inserts one row, then returns a status. A dataset above
``network.stream_above_mb`` arrives as a file in the spool (see :mod:`sonoshot.dicom_io.upper_layer`)
and is made durable in place. Decoding pixels, de-identification and inference never run on
pynetdicom's threads. Connection limits live in :mod:`sonoshot.dicom_io.gate` and
:mod:`sonoshot.dicom_io.upper_layer`.

Status codes follow PS3.4 Annex B.2.3 (Storage Service Class): 0xA7xx refused, out of
resources; 0xCxxx error, cannot understand; 0x0000 success.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.sop_class import Verification
from pynetdicom.utils import make_target

from sonoshot.config import NetworkConfig, TLSConfig
from sonoshot.db.store import NewInstance, Store
from sonoshot.dicom_io import upper_layer
from sonoshot.dicom_io.gate import ConnectionGate, GatedAE, GuardedServer, SharedContexts
from sonoshot.dicom_io.part10 import part10_header
from sonoshot.dicom_io.spool import Spool, UnsafeUID
from sonoshot.dicom_io.structure import summarize, summarize_file

log = logging.getLogger(__name__)

SUCCESS = 0x0000
#: PS3.4 B.2.3 statuses returned by :func:`handle_store`, with the reason logged beside them.
STATUS_TEXT: dict[int, str] = {
    0xA700: "refused: out of resources (free disk below the watermark)",
    0xA701: "refused: out of resources (the spool could not be written)",
    0xC210: "error: the dataset could not be decoded",
    0xC211: "error: unexpected failure while storing",
    0xC220: "error: a required UID is missing or invalid",
    0xC221: "error: SOP Instance UID differs from the C-STORE request's Affected SOP Instance UID",
    0xC230: "error: the dataset is truncated or its pixel data does not match its image attributes",
}


@dataclass
class Receiver:
    """What the handlers need, bound to them at registration (pynetdicom style)."""

    spool: Spool
    store: Store
    min_free_mb: int
    pseudonymize_patient: Callable[[str], str] | None = None
    count_outcome: Callable[[str], None] = lambda _outcome: None  # stored, duplicate, refused (metrics)
    count_refusal: Callable[[str], None] = lambda _reason: None  # connections closed by the limits (metrics)
    open_associations: dict[object, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _refuse(event: evt.Event, receiver: Receiver, status: int, sop_uid: str | None = None,
            study_uid: str | None = None, why: str | None = None) -> int:
    calling = event.assoc.requestor.ae_title
    receiver.count_outcome("refused")
    log.warning("C-STORE from %s: status 0x%04X %s%s (SOP Instance %s)", calling, status, STATUS_TEXT[status],
                f": {why}" if why else "", sop_uid or "unknown")
    receiver.store.record_event("instance", f"status-0x{status:04X}", sop_instance_uid=sop_uid,
                                study_instance_uid=study_uid, calling_ae_title=calling,
                                association_id=receiver.open_associations.get(event.assoc),
                                detail={"status": STATUS_TEXT[status], **({"why": why} if why else {})})
    return status


def handle_store(event: evt.Event, receiver: Receiver) -> int:
    """EVT_C_STORE: make the instance durable, index it, then acknowledge.

    Returns 0x0000 (also for a duplicate SOP Instance UID, which is stored once), 0xA700 when
    free disk is under the watermark, 0xA701 when the spool cannot be written, 0xC210 when the
    UIDs cannot be decoded, 0xC230 for a truncated dataset, broken sequences or fragments or
    pixel data of the wrong size, 0xC220 for a missing or invalid Study/Series/SOP Instance UID,
    and 0xC221 when the dataset's SOP Instance UID differs from the request's.
    """
    request_uid = str(event.request.AffectedSOPInstanceUID or "")
    if receiver.spool.free_mb() < receiver.min_free_mb:
        return _refuse(event, receiver, 0xA700, request_uid)
    streamed = event.dataset_path  # a .part file in the spool's .incoming, or None: held in memory
    syntax = event.context.transfer_syntax
    try:
        if streamed is None:
            data = event.encoded_dataset(include_meta=False)
            summary = summarize(data, syntax)
        else:
            summary = summarize_file(streamed, syntax)
        ds = summary.dataset
        sop_uid = str(ds.get("SOPInstanceUID", ""))
        study_uid = str(ds.get("StudyInstanceUID", ""))
        series_uid = str(ds.get("SeriesInstanceUID", ""))
        modality = ds.get("Modality")
        patient_id = str(ds.get("PatientID", ""))
    except Exception as exc:  # pydicom raises many types for malformed values
        return _refuse(event, receiver, 0xC210, request_uid, why=type(exc).__name__)
    if summary.problem:
        return _refuse(event, receiver, 0xC230, request_uid, why=summary.problem)
    try:
        relative = receiver.spool.relative_path(study_uid, series_uid, sop_uid)
    except UnsafeUID as exc:
        return _refuse(event, receiver, 0xC220, None, why=str(exc))
    if sop_uid != request_uid:
        return _refuse(event, receiver, 0xC221, sop_uid, study_uid)
    if receiver.spool.holds(relative):
        return _duplicate(event, receiver, sop_uid, study_uid)
    try:
        if streamed is None:
            head = part10_header(str(event.request.AffectedSOPClassUID), request_uid, str(syntax))
            size = receiver.spool.put(relative, head, data)
        else:
            size = receiver.spool.adopt(relative, streamed)
    except OSError as exc:
        return _refuse(event, receiver, 0xA701, sop_uid, study_uid, why=exc.strerror)
    recorded = receiver.store.record_instance(NewInstance(
        sop_instance_uid=sop_uid, study_instance_uid=study_uid, series_instance_uid=series_uid,
        sop_class_uid=str(event.request.AffectedSOPClassUID), transfer_syntax_uid=str(syntax),
        modality=modality, path=relative, size_bytes=size, calling_ae_title=event.assoc.requestor.ae_title,
        called_ae_title=event.assoc.acceptor.ae_title,
        patient_pseudonym=receiver.pseudonymize_patient(patient_id)
        if receiver.pseudonymize_patient and patient_id else None,
    ), association_id=receiver.open_associations.get(event.assoc))
    if not recorded:  # the same SOP Instance UID is indexed under another study or series: keep that one
        with contextlib.suppress(FileNotFoundError):
            receiver.spool.path(relative).unlink()
        return _duplicate(event, receiver, sop_uid, study_uid)
    receiver.count_outcome("stored")
    return SUCCESS


def _duplicate(event: evt.Event, receiver: Receiver, sop_uid: str, study_uid: str) -> int:
    receiver.store.record_event("instance", "duplicate", sop_instance_uid=sop_uid, study_instance_uid=study_uid,
                                calling_ae_title=event.assoc.requestor.ae_title)
    receiver.count_outcome("duplicate")
    return SUCCESS


def handle_accepted(event: evt.Event, receiver: Receiver) -> None:
    """EVT_ACCEPTED: open an association row (who, from where)."""
    assoc = event.assoc
    row = receiver.store.open_association(assoc.requestor.ae_title, assoc.acceptor.ae_title,
                                          str(assoc.requestor.address))
    with receiver.lock:
        receiver.open_associations[assoc] = row
    log.info("association %d accepted from %s (%s)", row, assoc.requestor.ae_title, assoc.requestor.address)


def _close(event: evt.Event, receiver: Receiver, outcome: str) -> None:
    with receiver.lock:
        row = receiver.open_associations.pop(event.assoc, None)
    if row is not None:
        receiver.store.close_association(row, outcome)
        log.info("association %d %s", row, outcome)


def handle_released(event: evt.Event, receiver: Receiver) -> None:
    """EVT_RELEASED: the peer released the association normally."""
    _close(event, receiver, "released")


def handle_aborted(event: evt.Event, receiver: Receiver) -> None:
    """EVT_ABORTED: the association was aborted by either side."""
    _close(event, receiver, "aborted")


def handle_conn_close(event: evt.Event, receiver: Receiver) -> None:
    """EVT_CONN_CLOSE: the TCP connection closed (after release/abort, or dropped); it may come
    before EVT_RELEASED of the same association."""
    _close(event, receiver, "released" if event.assoc.is_released else "closed")


def handle_rejected(event: evt.Event, receiver: Receiver) -> None:
    """EVT_REJECTED: an association was refused (unknown AE title, too many associations)."""
    assoc = event.assoc
    receiver.store.record_event("association", "rejected", calling_ae_title=assoc.requestor.ae_title,
                                detail={"peer": str(assoc.requestor.address), "called": assoc.requestor.ae_title
                                        and assoc.acceptor.ae_title})
    log.warning("association from %s (%s) rejected", assoc.requestor.ae_title, assoc.requestor.address)


def server_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """A TLS server context from config: our certificate and key, peers checked against the CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls.ca_certificate or None)
    context.load_cert_chain(tls.certificate, tls.private_key)
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    return context


def make_ae(network: NetworkConfig, gate: ConnectionGate | None = None) -> GatedAE:
    """An AE that accepts Verification and every storage SOP class in every listed transfer syntax.

    Storage classes are those of PS3.4 B.5 known to pynetdicom plus ``extra_sop_classes``;
    each is offered with :func:`transfer_syntaxes`, and stored exactly as received. Only
    connections that sent an A-ASSOCIATE-RQ (``gate`` knows which) count against
    ``max_associations``.
    """
    ae = GatedAE(ae_title=network.ae_title)
    ae.gate = gate
    ae.add_supported_context(Verification)
    syntaxes = transfer_syntaxes(network)
    storage = [cx.abstract_syntax for cx in AllStoragePresentationContexts]
    for sop_class in dict.fromkeys([*storage, *network.extra_sop_classes]):
        ae.add_supported_context(sop_class, syntaxes)
    ae.require_called_aet = network.enforce_called_ae_title
    ae.require_calling_aet = list(network.allowed_calling_ae_titles)
    ae.maximum_associations = network.max_associations
    ae.acse_timeout = network.acse_timeout_s
    ae.dimse_timeout = network.dimse_timeout_s
    ae.network_timeout = network.network_timeout_s
    ae.maximum_pdu_size = network.max_pdu_size
    return ae


def transfer_syntaxes(network: NetworkConfig) -> list[str]:
    """The transfer syntaxes we accept, in order of preference when a peer offers several.

    pynetdicom accepts the first of our list that the peer proposed. Encapsulated syntaxes come
    first, so a file is kept in the syntax its sender stored it in rather than decompressed on
    the way; then Explicit VR Little Endian, which keeps the VR of private elements (needed for
    de-identification), before Implicit VR and Big Endian; then any the config adds.
    """
    native = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
    encapsulated = [uid for uid in ALL_TRANSFER_SYNTAXES if uid not in native]
    return list(dict.fromkeys([*encapsulated, *native, *network.extra_transfer_syntaxes]))


def start_scp(network: NetworkConfig, receiver: Receiver) -> GuardedServer:
    """Start the storage SCP in background threads, its handlers bound to ``receiver``, behind the
    connection gate and the per-connection limits of ``network``."""
    gate = ConnectionGate(network.max_pending_per_address, network.max_pending, network.request_timeout_s,
                          receiver.count_refusal)
    guard = upper_layer.Guard(upper_layer.Limits(
        request_timeout_s=network.request_timeout_s, max_pdu_size=network.max_pdu_size,
        network_timeout_s=network.network_timeout_s, acse_timeout_s=network.acse_timeout_s,
        stream_above_bytes=network.stream_above_mb * 2**20, min_free_mb=receiver.min_free_mb),
        gate, receiver.spool, receiver.count_refusal)
    ae = make_ae(network, gate)
    bound = [receiver]
    handlers = [
        *upper_layer.handlers(guard),
        (evt.EVT_C_STORE, handle_store, bound),
        (evt.EVT_ACCEPTED, handle_accepted, bound),
        (evt.EVT_RELEASED, handle_released, bound),
        (evt.EVT_ABORTED, handle_aborted, bound),
        (evt.EVT_CONN_CLOSE, handle_conn_close, bound),
        (evt.EVT_REJECTED, handle_rejected, bound),
    ]
    ssl_context = server_ssl_context(network.tls) if network.tls.enabled else None
    server = ae.make_server((network.bind_address, network.port), evt_handlers=handlers, ssl_context=ssl_context,
                            contexts=SharedContexts(ae.supported_contexts),
                            server_class=GuardedServer, gate=gate)
    thread = threading.Thread(target=make_target(server.serve_forever),
                              name=f"AcceptorServer@{datetime.now():%Y%m%d%H%M%S}", daemon=True)
    thread.start()
    log.info("storage SCP %s listening on %s:%d%s", network.ae_title, network.bind_address, network.port,
             " (TLS)" if ssl_context else "")
    return server
