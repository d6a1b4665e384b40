"""retrieve.py
===========

Query/retrieve against a PACS as an SCU (Study Root, PS3.4 C.6.2): :func:`find_studies` asks
which studies match (C-FIND at STUDY level); :func:`move_study` has the PACS send one study
(C-MOVE) to a :class:`MoveDestination`, a storage SCP of our own that writes what it receives
into a folder per study. The PACS must know the destination's AE title, host and port (its own
list of DICOM nodes). Used by ``sonoshot import pacs``.

Statuses (PS3.4 C.4.1.1.4, C.4.2.1.5): C-FIND 0xFF00/0xFF01 pending (a match), 0x0000 done;
C-MOVE 0xFF00 pending, 0x0000 done, 0xB000 done with failed sub-operations, anything else failed.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from pydicom import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelMove)

from sonoshot.config import Destination
from sonoshot.dicom_io.spool import SUFFIX, UnsafeUID, check_uid

PENDING = frozenset({0xFF00, 0xFF01})


class RetrieveError(RuntimeError):
    """The PACS refused the association or the query/retrieve failed (the message says which)."""


def _associate(pacs: Destination, calling_ae_title: str, context: str, timeout_s: float):
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(context)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title)
    if not assoc.is_established:
        raise RetrieveError(f"no association with {pacs.ae_title}@{pacs.host}:{pacs.port}")
    return assoc


def find_studies(pacs: Destination, calling_ae_title: str, match: Mapping[str, str] | None = None,
                 timeout_s: float = 60.0) -> list[str]:
    """The Study Instance UIDs the PACS has that match ``match`` (DICOM keyword → value, e.g.
    ``{"ModalitiesInStudy": "US", "StudyDate": "20240101-20241231"}``).

    Raises
    ------
    RetrieveError
        If there is no association or the C-FIND fails.
    ValueError
        If a key of ``match`` is not a DICOM keyword.
    """
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    for keyword, value in (match or {}).items():
        try:
            setattr(query, keyword, value)
        except (AttributeError, ValueError) as exc:
            raise ValueError(f"C-FIND key {keyword!r} is not a DICOM keyword") from exc
        if keyword not in query:
            raise ValueError(f"C-FIND key {keyword!r} is not a DICOM keyword")
    assoc = _associate(pacs, calling_ae_title, StudyRootQueryRetrieveInformationModelFind, timeout_s)
    found: list[str] = []
    try:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            code = int(status.Status) if status and "Status" in status else None
            if code in PENDING and identifier is not None and identifier.get("StudyInstanceUID"):
                found.append(str(identifier.StudyInstanceUID))
            elif code != 0x0000:
                raise RetrieveError(f"C-FIND at {pacs.ae_title} failed: status "
                                    f"{'none' if code is None else f'0x{code:04X}'}")
    finally:
        assoc.release()
    return list(dict.fromkeys(found))


class MoveDestination:
    """A storage SCP, ``ae_title`` on ``bind_address:port``, writing each received instance to
    ``<folder>/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` exactly as received."""

    def __init__(self, folder: Path, ae_title: str, port: int, bind_address: str = "127.0.0.1") -> None:
        self.folder = Path(folder)
        self.ae_title = ae_title
        self.address = (bind_address, port)
        self.server = None
        self.lock = threading.Lock()

    def study_folder(self, study_uid: str) -> Path:
        return self.folder / check_uid(study_uid, "StudyInstanceUID")

    def _store(self, event: evt.Event) -> int:
        ds = event.dataset
        try:
            target = self.study_folder(str(ds.get("StudyInstanceUID", ""))) / \
                f"{check_uid(str(ds.get('SOPInstanceUID', '')), 'SOPInstanceUID')}{SUFFIX}"
        except UnsafeUID:
            return 0xC220  # PS3.4 B.2.3: error, a required UID is missing or invalid
        with self.lock:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        target.write_bytes(event.encoded_dataset(include_meta=True))
        return 0x0000

    def __enter__(self) -> "MoveDestination":
        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, [
                "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70",
                "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5"])
        self.server = ae.start_server(self.address, block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


def move_study(pacs: Destination, calling_ae_title: str, study_uid: str, destination: MoveDestination,
               timeout_s: float = 600.0) -> list[Path]:
    """Have the PACS C-MOVE one study to ``destination``; returns the files it received.

    Raises
    ------
    RetrieveError
        If there is no association, or the move ends with any status but 0x0000 (a move with
        failed sub-operations, 0xB000, would import a partial study).
    """
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = check_uid(study_uid, "StudyInstanceUID")
    assoc = _associate(pacs, calling_ae_title, StudyRootQueryRetrieveInformationModelMove, timeout_s)
    final = None
    try:
        for status, _identifier in assoc.send_c_move(query, destination.ae_title,
                                                     StudyRootQueryRetrieveInformationModelMove):
            code = int(status.Status) if status and "Status" in status else None
            if code not in PENDING:
                final = code
    finally:
        assoc.release()
    if final != 0x0000:
        raise RetrieveError(f"C-MOVE of study {study_uid} from {pacs.ae_title} ended with status "
                            f"{'none' if final is None else f'0x{final:04X}'}")
    folder = destination.study_folder(study_uid)
    return sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []
