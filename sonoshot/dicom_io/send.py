"""send.py
=======

C-STORE SCU towards one destination (a PACS), and C-ECHO to check one.

Each call opens one association, proposes only the presentation contexts its datasets need
(one per SOP Class and transfer syntax, PS3.7 D.3.3.2; uncompressed Explicit VR Little Endian
also offers Implicit VR Little Endian, the default every SCP supports, PS3.5 10.1), sends every
dataset, releases, and reports a :class:`SendOutcome`. It never raises for anything the peer or
the network does: the outbox decides from ``delivered`` and ``transient`` whether to retry.

Status classes (PS3.4 B.2.3, PS3.7 C):

* delivered: 0x0000 Success, and the warnings 0xB000 Coercion of Data Elements, 0xB006 Elements
  Discarded, 0xB007 Data Set Does Not Match SOP Class (the SCP stored the instance);
* permanent (retrying the same bytes cannot help): 0xA900-0xA9FF Data Set Does Not Match SOP
  Class, 0xC000-0xCFFF Cannot Understand, 0x0122 SOP Class Not Supported, 0x0124 Not
  Authorized, 0x0117 Invalid SOP Instance, 0x0211 Unrecognized Operation, 0x0212 Mistyped
  Argument, and no accepted presentation context for the dataset;
* transient (retry later): 0xA700-0xA7FF Out of Resources, any other status, an empty status
  (DIMSE timeout or abort, pynetdicom returns an empty Dataset), and no association at all
  (refused connection, timeout, A-ASSOCIATE-RJ of either kind, TLS handshake failure).

Details never contain PHI: AE titles, host, port, UIDs and status codes only.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, Association, evt
from pynetdicom.sop_class import Verification

from sonoshot.config import Destination, TLSConfig

MAX_CONTEXTS = 128  # presentation context IDs are odd numbers 1-255 (PS3.8 9.3.2.2)
DELIVERED_WARNINGS = frozenset({0xB000, 0xB006, 0xB007})
PERMANENT_FAILURES = frozenset({0x0117, 0x0122, 0x0124, 0x0211, 0x0212})


class StoreResultValues(Enum):
    """What a C-STORE response status means for delivery."""

    DELIVERED = "delivered"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


def classify_store_status(status: int | None) -> StoreResultValues:
    """Classify a C-STORE response status (PS3.4 B.2.3); ``None`` means no response.

    Raises
    ------
    TypeError
        If ``status`` is not an int or None.
    ValueError
        If ``status`` is outside 0x0000-0xFFFF.
    """
    if status is None:
        return StoreResultValues.TRANSIENT
    if isinstance(status, bool) or not isinstance(status, int):
        raise TypeError(f'Argument "status" must be an int or None, got {type(status).__name__}.')
    if not 0 <= status <= 0xFFFF:
        raise ValueError(f'Argument "status" must be in 0x0000-0xFFFF, got {status:#x}.')
    if status == 0x0000 or status in DELIVERED_WARNINGS:
        return StoreResultValues.DELIVERED
    if status in PERMANENT_FAILURES or 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF:
        return StoreResultValues.PERMANENT
    return StoreResultValues.TRANSIENT


@dataclass(frozen=True)
class InstanceStatus:
    """The response for one dataset: ``status`` is None when none came (or it was not sent)."""

    sop_instance_uid: str
    status: int | None
    result: StoreResultValues


@dataclass(frozen=True)
class SendOutcome:
    """The outcome of one :func:`send_datasets` call.

    Attributes
    ----------
    delivered : bool
        Every dataset was stored (Success or a delivered warning).
    transient : bool
        Not delivered, and a retry may succeed (at least one dataset failed transiently, or
        no association was established). False when delivered or when every failure is
        permanent.
    statuses : tuple[InstanceStatus, ...]
        One per dataset, in the order given.
    detail : str
        One line for logs and the database, without PHI.
    """

    delivered: bool
    transient: bool
    statuses: tuple[InstanceStatus, ...]
    detail: str


@dataclass(frozen=True)
class EchoOutcome:
    """The outcome of :func:`echo`: ``ok`` when the peer answered C-ECHO with Success."""

    ok: bool
    status: int | None
    detail: str


def ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """A client TLS context from ``tls`` (PS3.15 B.9 BCP 195 profile: TLS 1.2 or later).

    The peer's certificate must chain to ``tls.ca_certificate`` (the system CAs when empty) and
    name the destination host; ``tls.certificate``/``tls.private_key`` authenticate us.

    Raises
    ------
    ValueError
        If ``tls`` is not enabled.
    OSError, ssl.SSLError
        If a certificate or key file cannot be read or used.
    """
    if not tls.enabled:
        raise ValueError('Argument "tls" has no certificate: TLS is not enabled.')
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_certificate or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.certificate, tls.private_key or None)
    return context


def _check_arguments(dest: Any, calling_ae_title: Any, timeout_s: Any) -> str:
    if not isinstance(dest, Destination):
        raise TypeError(f'Argument "dest" must be a Destination, got {type(dest).__name__}.')
    title = dest.calling_ae_title or calling_ae_title
    if not isinstance(title, str):
        raise TypeError('Argument "calling_ae_title" must be a str.')
    if not 0 < len(title.strip()) <= 16 or "\\" in title:
        raise ValueError(f'Argument "calling_ae_title" must have 1 to 16 characters, got {title!r}.')
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
        raise TypeError('Argument "timeout_s" must be a number.')
    if not timeout_s > 0:
        raise ValueError(f'Argument "timeout_s" must be positive, got {timeout_s}.')
    return title


def _contexts(datasets: Any) -> list[tuple[str, list[str]]]:
    """The presentation contexts the datasets need: (SOP Class, transfer syntaxes), in order."""
    if isinstance(datasets, Dataset) or not isinstance(datasets, Sequence):
        raise TypeError('Argument "datasets" must be a sequence of pydicom Dataset.')
    if not datasets:
        raise ValueError('Argument "datasets" must not be empty.')
    contexts: dict[tuple[str, str], list[str]] = {}
    for ds in datasets:
        if not isinstance(ds, Dataset):
            raise TypeError(f'Items of argument "datasets" must be pydicom Dataset, got {type(ds).__name__}.')
        syntax = ds.get("file_meta", Dataset()).get("TransferSyntaxUID")
        if not syntax or "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
            raise ValueError(
                'Argument "datasets": every dataset needs (0008,0016) SOP Class UID, (0008,0018) '
                "SOP Instance UID and a file meta (0002,0010) Transfer Syntax UID."
            )
        syntaxes = [syntax, ImplicitVRLittleEndian] if syntax == ExplicitVRLittleEndian else [syntax]
        contexts.setdefault((str(ds.SOPClassUID), str(syntax)), [str(s) for s in syntaxes])
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f'Argument "datasets" needs {len(contexts)} presentation contexts, at most {MAX_CONTEXTS}.')
    return [(sop_class, syntaxes) for (sop_class, _), syntaxes in contexts.items()]


def _send_at_once(event: Any) -> None:
    """EVT_CONN_OPEN: no Nagle delay. pynetdicom writes a message's command and dataset as separate
    PDUs; without ``TCP_NODELAY`` the second waits for the peer's delayed ACK of the first (about
    100 ms per C-STORE to Orthanc on loopback, against a few ms)."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _associate(dest: Destination, calling_ae_title: str, timeout_s: float,
               contexts: list[tuple[str, list[str]]]) -> tuple[Association | None, str]:
    """An established association, or None and why not."""
    where = f"{dest.ae_title}@{dest.host}:{dest.port}"
    try:
        tls_args = (ssl_context(dest.tls), dest.host) if dest.tls.enabled else None
    except (OSError, ssl.SSLError) as exc:
        return None, f"{where}: TLS configuration unusable ({type(exc).__name__}: {exc})"
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    rejections: list[Any] = []

    def on_acse_recv(event: Any) -> None:
        if getattr(event.primitive, "result", None) in (0x01, 0x02):
            rejections.append(event.primitive)

    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args,
                         evt_handlers=[(evt.EVT_ACSE_RECV, on_acse_recv), (evt.EVT_CONN_OPEN, _send_at_once)])
    if assoc.is_established:
        return assoc, where
    if rejections:
        rj = rejections[0]
        return None, f"{where}: association rejected ({rj.result_str}; {rj.source_str}; {rj.reason_str})"
    return None, f"{where}: no association (connection refused or aborted, timeout, or TLS handshake failure)"


def send_datasets(dest: Destination, datasets: Sequence[Dataset], calling_ae_title: str,
                  timeout_s: float = 30.0) -> SendOutcome:
    """Store ``datasets`` at ``dest`` over one association (C-STORE, PS3.4 B).

    Parameters
    ----------
    dest : sonoshot.config.Destination
        The peer; ``dest.tls`` enables TLS when it has a certificate.
    datasets : Sequence[pydicom.dataset.Dataset]
        Sent as encoded in their file meta transfer syntax (or converted between the
        uncompressed little endian syntaxes if the peer accepts only the implicit one).
    calling_ae_title : str
        Our AE title, used unless ``dest.calling_ae_title`` is set.
    timeout_s : float
        Connection, ACSE, DIMSE and network timeout, each.

    Returns
    -------
    SendOutcome
        See the module docstring for how statuses are classified.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If ``datasets`` is empty, a dataset lacks its SOP Class/Instance UID or transfer syntax,
        more than 128 presentation contexts would be needed, or an AE title or timeout is invalid.
    """
    title = _check_arguments(dest, calling_ae_title, timeout_s)
    contexts = _contexts(datasets)
    assoc, detail = _associate(dest, title, timeout_s, contexts)
    if assoc is None:
        statuses = tuple(InstanceStatus(str(ds.SOPInstanceUID), None, StoreResultValues.TRANSIENT)
                         for ds in datasets)
        return SendOutcome(delivered=False, transient=True, statuses=statuses, detail=detail)
    results: list[InstanceStatus] = []
    try:
        for ds in datasets:
            uid = str(ds.SOPInstanceUID)
            if not assoc.is_established:  # aborted or timed out on an earlier dataset
                results.append(InstanceStatus(uid, None, StoreResultValues.TRANSIENT))
                continue
            try:
                response = assoc.send_c_store(ds)
            except ValueError:  # no accepted presentation context for this SOP Class/syntax
                results.append(InstanceStatus(uid, None, StoreResultValues.PERMANENT))
                continue
            status = int(response.Status) if "Status" in response else None
            results.append(InstanceStatus(uid, status, classify_store_status(status)))
    finally:
        if assoc.is_established:
            assoc.release()
    kinds = [r.result for r in results]
    delivered = all(k is StoreResultValues.DELIVERED for k in kinds)
    transient = StoreResultValues.TRANSIENT in kinds
    codes = ", ".join(sorted({"none" if r.status is None else f"{r.status:#06x}" for r in results}))
    summary = f"{kinds.count(StoreResultValues.DELIVERED)} of {len(results)} delivered (status {codes})"
    if StoreResultValues.PERMANENT in kinds and not transient:
        summary += "; permanent failure"
    elif transient:
        summary += "; retry later"
    return SendOutcome(delivered=delivered, transient=transient, statuses=tuple(results),
                       detail=f"{detail}: {summary}")


def echo(dest: Destination, calling_ae_title: str, timeout_s: float = 10.0) -> EchoOutcome:
    """Verify ``dest`` with C-ECHO (PS3.4 A.4), over TLS when ``dest.tls`` is enabled.

    Raises
    ------
    TypeError, ValueError
        If an argument is invalid (as for :func:`send_datasets`).
    """
    title = _check_arguments(dest, calling_ae_title, timeout_s)
    assoc, detail = _associate(dest, title, timeout_s, [(Verification, [ImplicitVRLittleEndian])])
    if assoc is None:
        return EchoOutcome(ok=False, status=None, detail=detail)
    try:
        response = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    status = int(response.Status) if "Status" in response else None
    text = "no response" if status is None else f"status {status:#06x}"
    return EchoOutcome(ok=status == 0x0000, status=status, detail=f"{detail}: C-ECHO {text}")
