"""receive.py
==========

The storage SCP. Handlers are small functions bound to pynetdicom events; the C-STORE handler
only persists and acknowledges (write, fsync, rename, insert a row, return a status). Decoding
pixels, de-identification and inference never run on pynetdicom's threads.

Status codes follow PS3.4 Annex B.2.3 (Storage Service Class): 0xA7xx refused, out of
resources; 0xCxxx error, cannot understand; 0x0000 success.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.encaps import generate_fragments
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from sonoshot.config import NetworkConfig, TLSConfig
from sonoshot.db.store import NewInstance, Store
from sonoshot.dicom_io.spool import Spool, UnsafeUID

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


def structural_problem(ds: Dataset, transfer_syntax: UID) -> str | None:
    """Why ``ds`` is not a whole instance (a value shorter than its length, pixel data of the wrong
    size, broken fragments), or None. Cheap: nothing is decompressed.
    """
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement) and raw.value is not None and raw.length != 0xFFFFFFFF \
                and len(raw.value) < raw.length:
            return f"{tag} value is {len(raw.value)} of {raw.length} bytes"
    if "PixelData" not in ds:
        return None
    try:
        frames = int(ds.get("NumberOfFrames", 1) if ds.get("NumberOfFrames") not in (None, "") else 1)
        if frames < 1:
            return f"(0028,0008) Number of Frames is {frames}"
        pixels = ds.PixelData
        if transfer_syntax.is_encapsulated:
            fragments = list(generate_fragments(pixels))
            return None if len(fragments) > 1 else "(7FE0,0010) Pixel Data holds no fragment"
        samples = int(ds.get("SamplesPerPixel", 1))
        if ds.get("PhotometricInterpretation") == "YBR_FULL_422":  # PS3.3 C.7.6.3.1.2: 2 values a pixel
            samples = 2
        expected = (int(ds.Rows) * int(ds.Columns) * samples * frames * int(ds.BitsAllocated) + 7) // 8
    except (AttributeError, TypeError, ValueError) as exc:
        return f"(7FE0,0010) Pixel Data cannot be checked: {type(exc).__name__}"
    if len(pixels) not in (expected, expected + expected % 2):
        return f"(7FE0,0010) Pixel Data is {len(pixels)} bytes, the image attributes need {expected}"
    return None


@dataclass
class Receiver:
    """What the handlers need, bound to them at registration (pynetdicom style)."""

    spool: Spool
    store: Store
    min_free_mb: int
    pseudonymize_patient: Callable[[str], str] | None = None
    count_outcome: Callable[[str], None] = lambda _outcome: None  # stored, duplicate, refused (metrics)
    node: str | None = None  # cluster mode: this receiver, which holds each instance until it is uploaded
    on_indexed: Callable[[str, bool], None] | None = None  # (spool path, whether the row is new), after commit
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
    free disk is under the watermark, 0xA701 when the spool cannot be written, 0xC210 for an
    undecodable dataset, 0xC230 for a truncated one or pixel data of the wrong size, 0xC220 for a missing or invalid Study/Series/SOP Instance UID, and
    0xC221 when the dataset's SOP Instance UID differs from the request's.
    """
    request_uid = str(event.request.AffectedSOPInstanceUID or "")
    if receiver.spool.free_mb() < receiver.min_free_mb:
        return _refuse(event, receiver, 0xA700, request_uid)
    try:
        ds = event.dataset
        problem = structural_problem(ds, event.context.transfer_syntax)
        for _element in ds:  # decode every element now: a malformed value fails here, not later
            pass
    except Exception as exc:  # pydicom raises many types for malformed input
        return _refuse(event, receiver, 0xC210, request_uid, why=type(exc).__name__)
    if problem:
        return _refuse(event, receiver, 0xC230, request_uid, why=problem)
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    study_uid = str(ds.get("StudyInstanceUID", ""))
    try:
        relative = receiver.spool.relative_path(study_uid, str(ds.get("SeriesInstanceUID", "")), sop_uid)
    except UnsafeUID as exc:
        return _refuse(event, receiver, 0xC220, None, why=str(exc))
    if sop_uid != request_uid:
        return _refuse(event, receiver, 0xC221, sop_uid, study_uid)
    if receiver.store.has_instance(sop_uid):
        receiver.store.record_event("instance", "duplicate", sop_instance_uid=sop_uid, study_instance_uid=study_uid,
                                    calling_ae_title=event.assoc.requestor.ae_title)
        receiver.count_outcome("duplicate")
        return SUCCESS
    try:
        size = receiver.spool.put(relative, event.encoded_dataset(include_meta=True))
    except OSError as exc:
        return _refuse(event, receiver, 0xA701, sop_uid, study_uid, why=exc.strerror)
    patient_id = str(ds.get("PatientID", ""))
    new = receiver.store.record_instance(NewInstance(
        sop_instance_uid=sop_uid, study_instance_uid=study_uid,
        series_instance_uid=str(ds.SeriesInstanceUID), sop_class_uid=str(event.request.AffectedSOPClassUID),
        transfer_syntax_uid=str(event.context.transfer_syntax), modality=ds.get("Modality"), path=relative,
        size_bytes=size, calling_ae_title=event.assoc.requestor.ae_title,
        called_ae_title=event.assoc.acceptor.ae_title,
        patient_pseudonym=receiver.pseudonymize_patient(patient_id)
        if receiver.pseudonymize_patient and patient_id else None, pending_upload=receiver.node,
    ), association_id=receiver.open_associations.get(event.assoc))
    if receiver.on_indexed is not None:
        receiver.on_indexed(relative, new)
    receiver.count_outcome("stored")
    return SUCCESS


def handle_accepted(event: evt.Event, receiver: Receiver) -> None:
    """EVT_ACCEPTED: open an association row (who, from where)."""
    assoc = event.assoc
    row = receiver.store.open_association(assoc.requestor.ae_title, assoc.acceptor.ae_title,
                                          str(assoc.requestor.address), receiver.node)
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
    """EVT_CONN_CLOSE: the TCP connection closed (after release/abort, or dropped)."""
    _close(event, receiver, "closed")


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


def make_ae(network: NetworkConfig) -> AE:
    """An AE that accepts Verification and every storage SOP class in every listed transfer syntax.

    Storage classes are those of PS3.4 B.5 known to pynetdicom plus ``extra_sop_classes``;
    each is offered with :func:`transfer_syntaxes`, and stored exactly as received.
    """
    ae = AE(ae_title=network.ae_title)
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


def start_scp(network: NetworkConfig, receiver: Receiver) -> ThreadedAssociationServer:
    """Start the storage SCP in background threads, its handlers bound to ``receiver``."""
    ae = make_ae(network)
    bound = [receiver]
    handlers = [
        (evt.EVT_C_STORE, handle_store, bound),
        (evt.EVT_ACCEPTED, handle_accepted, bound),
        (evt.EVT_RELEASED, handle_released, bound),
        (evt.EVT_ABORTED, handle_aborted, bound),
        (evt.EVT_CONN_CLOSE, handle_conn_close, bound),
        (evt.EVT_REJECTED, handle_rejected, bound),
    ]
    ssl_context = server_ssl_context(network.tls) if network.tls.enabled else None
    server = ae.start_server((network.bind_address, network.port), block=False, evt_handlers=handlers,
                             ssl_context=ssl_context)
    log.info("storage SCP %s listening on %s:%d%s", network.ae_title, network.bind_address, network.port,
             " (TLS)" if ssl_context else "")
    return server
