"""archive.py
==========

Archive runs: existing studies from a folder, an S3 prefix or a PACS (C-FIND/C-MOVE) enter the
pipeline in the *archive lane*. Each study's instances are stored under their usual keys and
indexed (the instance rows are the record of the import), then the study is completed at once
and its de-identification job deferred, with the study-row update, to the low-priority
``archive`` queue under the queueing lock ``archive:<StudyInstanceUID>`` (its detection goes to
``archive-detect``). Live studies jump the whole backlog: every job of an archive study has a
lower priority than any live job, a worker without the archive queues never takes one, and the
in-process pool claims live studies first.

An import is restartable: an instance already indexed is skipped, and a study already complete
(or further) is not queued again, so running the same import twice queues each study once.
While an import runs it holds an association row open, so the completion sweep cannot complete
a study it is still adding to.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from sonoshot.config import Destination
from sonoshot.db.lifecycle import StudyState
from sonoshot.db.store import NewInstance, Store
from sonoshot.db.work import Lane
from sonoshot.dicom_io.retrieve import MoveDestination, find_studies, move_study
from sonoshot.dicom_io.spool import UnsafeUID, check_uid
from sonoshot.objects import Kind, ObjectStore

log = logging.getLogger(__name__)

#: The calling AE title recorded for imported instances and the import's association row.
IMPORT_AE_TITLE = "SONOSHOT-IMPORT"
Progress = Callable[[Iterable[Any], str, int], Iterable[Any]]  # (items, description, total) -> items


def _no_progress(items: Iterable[Any], _description: str, _total: int) -> Iterable[Any]:
    return items


@dataclass
class ImportReport:
    """What one import run did."""

    studies_queued: int = 0
    studies_skipped: int = 0  # complete or further already (an earlier run queued them)
    instances_stored: int = 0
    instances_known: int = 0
    files_unreadable: int = 0


class ArchiveImport:
    """Stores and queues studies in the archive lane; use as a context manager (it holds the
    import's association row open for as long as it runs)."""

    def __init__(self, store: Store, objects: ObjectStore, pseudonymize: Callable[[str], str] | None,
                 node: str, progress: Progress = _no_progress) -> None:
        self.store = store
        self.objects = objects
        self.pseudonymize = pseudonymize
        self.node = node
        self.progress = progress
        self.report = ImportReport()
        self.association: int | None = None

    def __enter__(self) -> "ArchiveImport":
        self.association = self.store.open_association(IMPORT_AE_TITLE, IMPORT_AE_TITLE, "sonoshot import", self.node)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.association is not None:
            self.store.close_association(self.association, "released" if exc[0] is None else "aborted")

    def wanted(self, study_uid: str) -> bool:
        """Whether ``study_uid`` still needs importing (unknown, or an earlier run stopped mid-study)."""
        study = self.store.study(study_uid)
        return study is None or study.state is StudyState.RECEIVING

    def import_study(self, study_uid: str, files: list[Path]) -> bool:
        """Store and index ``files`` (one study's), then complete and queue the study; returns
        whether it was queued (False: an earlier run queued it already)."""
        if not self.wanted(study_uid):
            self.report.studies_skipped += 1
            return False
        for path in files:
            self._store_instance(path)
        queued = self.store.complete_study(study_uid) is not None
        if queued:
            self.report.studies_queued += 1
        else:
            self.report.studies_skipped += 1
        return queued

    def _store_instance(self, path: Path) -> None:
        try:
            ds = dcmread(path, stop_before_pixels=True)
            key = "/".join((check_uid(str(ds.StudyInstanceUID), "StudyInstanceUID"),
                            check_uid(str(ds.SeriesInstanceUID), "SeriesInstanceUID"),
                            check_uid(str(ds.SOPInstanceUID), "SOPInstanceUID") + ".dcm"))
        except (InvalidDicomError, AttributeError, UnsafeUID, OSError, ValueError) as exc:
            log.warning("%s not imported: %s", path.name, type(exc).__name__)
            self.report.files_unreadable += 1
            return
        if self.store.has_instance(str(ds.SOPInstanceUID)):
            self.report.instances_known += 1
            return
        self.objects.put_file(Kind.ORIGINALS, key, path)
        patient_id = str(ds.get("PatientID", ""))
        new = self.store.record_instance(NewInstance(
            sop_instance_uid=str(ds.SOPInstanceUID), study_instance_uid=str(ds.StudyInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID), sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), modality=ds.get("Modality"), path=key,
            size_bytes=path.stat().st_size, calling_ae_title=IMPORT_AE_TITLE, called_ae_title=IMPORT_AE_TITLE,
            patient_pseudonym=self.pseudonymize(patient_id) if self.pseudonymize and patient_id else None,
            lane=Lane.ARCHIVE), self.association)
        self.report.instances_stored += new
        self.report.instances_known += not new

    def studies_in(self, files: Iterable[Path], total: int) -> dict[str, list[Path]]:
        """Group DICOM files by Study Instance UID (headers only); unreadable files are counted."""
        studies: dict[str, list[Path]] = {}
        for path in self.progress(files, "reading headers", total):
            try:
                uid = str(dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID)
            except (InvalidDicomError, AttributeError, OSError, ValueError):
                self.report.files_unreadable += 1
                continue
            studies.setdefault(uid, []).append(path)
        return studies

    def import_folder(self, folder: Path) -> ImportReport:
        """Every DICOM file under ``folder`` (recursively), study by study."""
        files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
        studies = self.studies_in(files, len(files))
        for uid, paths in self.progress(studies.items(), "importing studies", len(studies)):
            self.import_study(uid, paths)
        return self.report

    def import_s3(self, client: Any, bucket: str, prefix: str, scratch: Path) -> ImportReport:
        """Every object under ``s3://bucket/prefix``, downloaded into the folder ``scratch`` (each
        study's files are deleted once it is imported)."""
        keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                for item in page.get("Contents", []) if not item["Key"].endswith("/")]
        local = []
        for n, key in enumerate(self.progress(keys, "downloading", len(keys))):
            path = Path(scratch) / f"{n:09d}.dcm"
            client.download_file(bucket, key, str(path))
            local.append(path)
        studies = self.studies_in(local, len(local))
        for uid, paths in self.progress(studies.items(), "importing studies", len(studies)):
            self.import_study(uid, paths)
            for path in paths:
                path.unlink()
        return self.report

    def import_pacs(self, pacs: Destination, calling_ae_title: str, match: Mapping[str, str],
                    destination: MoveDestination) -> ImportReport:
        """Every study the PACS finds for ``match``, moved (C-MOVE) to ``destination`` one at a time."""
        uids = find_studies(pacs, calling_ae_title, match)
        with destination:
            for uid in self.progress(uids, "importing studies", len(uids)):
                if not self.wanted(uid):
                    self.report.studies_skipped += 1
                    continue
                files = move_study(pacs, calling_ae_title, uid, destination)
                self.import_study(uid, files)
                shutil.rmtree(destination.study_folder(uid), ignore_errors=True)
        return self.report
