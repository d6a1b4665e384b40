"""Restart recovery on a real database and spool: the state left by a crash is put right."""

from __future__ import annotations

import pydicom
from pydicom.uid import generate_uid

from sonoshot.daemon import jobs
from sonoshot.db.lifecycle import StudyState
from sonoshot.db.store import NewInstance, Store
from sonoshot.dicom_io.spool import Spool


def _store(tmp_path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    return store


def _write(spool: Spool, shared_dicom, study: str | None = None) -> pydicom.Dataset:
    ds = pydicom.dcmread(shared_dicom / "orthanc-1.2.840.10008.1.2.4.50.dcm")
    ds.StudyInstanceUID = study or generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    relative = spool.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    spool.path(relative).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(spool.path(relative))
    return ds


def test_spool_file_without_a_row_is_indexed(tmp_path, shared_dicom):
    store, spool = _store(tmp_path), Spool(tmp_path / "spool")
    ds = _write(spool, shared_dicom)
    counts = jobs.recover(spool, store)
    assert counts["files_indexed"] == 1
    assert store.has_instance(ds.SOPInstanceUID)
    assert jobs.recover(spool, store)["files_indexed"] == 0  # idempotent


def test_file_under_a_wrong_path_is_not_indexed(tmp_path, shared_dicom):
    store, spool = _store(tmp_path), Spool(tmp_path / "spool")
    ds = _write(spool, shared_dicom)
    good = spool.path(spool.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))
    good.rename(good.with_name("1.2.3.dcm"))
    assert jobs.recover(spool, store)["files_indexed"] == 0
    assert not store.has_instance(ds.SOPInstanceUID)


def test_row_without_a_file_is_flagged_and_partial_files_discarded(tmp_path, shared_dicom):
    store, spool = _store(tmp_path), Spool(tmp_path / "spool")
    ds = _write(spool, shared_dicom)
    jobs.recover(spool, store)
    relative = spool.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    spool.path(relative).unlink()
    (spool.incoming / "crash.part").write_bytes(b"half an instance")
    counts = jobs.recover(spool, store)
    assert counts["files_missing"] == 1 and counts["partial_files_discarded"] == 1
    (instance,) = store.instances_of(store.study(ds.StudyInstanceUID))
    assert instance.file_missing
    assert list(spool.incoming.iterdir()) == []


def test_open_association_and_interrupted_study_are_recovered(tmp_path):
    store, spool = _store(tmp_path), Spool(tmp_path / "spool")
    association = store.open_association("MODALITY", "SONOSHOT", "127.0.0.1")
    study = generate_uid()
    store.record_instance(NewInstance(generate_uid(), study, generate_uid(), "1.2.840.10008.5.1.4.1.1.6.1",
                                      "1.2.840.10008.1.2.1", "US", "x.dcm", 10), association)
    assert store.complete_quiet_studies(0, 3600) == []  # the association is still open
    counts = jobs.recover(spool, store)
    assert counts["associations_interrupted"] == 1
    (done,) = store.complete_quiet_studies(0, 3600)
    assert store.claim_study(StudyState.COMPLETE, StudyState.PROCESSING).study_instance_uid == done.study_instance_uid
    assert jobs.recover(spool, store)["studies_requeued"] == 1
    assert store.study(study).state is StudyState.COMPLETE
