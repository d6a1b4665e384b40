"""The storage SCP against real peers: DCMTK echoscu/storescu/dcmsend, Orthanc, pynetdicom."""

from __future__ import annotations

import io
import time
from datetime import datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import generate_fragments
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import (ComprehensiveSRStorage, EnhancedUSVolumeStorage, SecondaryCaptureImageStorage,
                                   UltrasoundImageStorage, UltrasoundMultiFrameImageStorage)

from tests.daemon import Daemon
from tests.peers import Orthanc, dcmsend, echo, storescu, wait_for
from tests.util import require_binary, testdata

US_FILES = ["orthanc-1.2.840.10008.1.2.4.50.dcm", "orthanc-Issue16.dcm", "orthanc-PrivateTags.dcm",
            "dcm4che-YBR_422.dcm", "orthanc-jp2k91YBR-ICT.dcm", "dcm4che-jpeg-ls-Palette.dcm"]
PYDICOM_US = ["examples_ybr_color.dcm", "US1_J2KR.dcm", "gdcm-US-ALOKA-16.dcm", "color3d_jpeg_baseline.dcm"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    require_binary("echoscu", "storescu", "dcmsend")
    with Daemon(tmp_path_factory.mktemp("receive"), {"completion": {"quiet_period_s": 1.5}}) as d:
        yield d


def _same_as_sent(stored: Path, sent: Path) -> None:
    """The stored instance holds the sent one unchanged: same transfer syntax, elements, pixel bytes.

    Group length elements (gggg,0000) are left out: DCMTK senders drop them on the wire. A native
    file may travel in another native syntax (the sender offers both; we prefer explicit VR). An
    encapsulated file's fragments must be the same bytes (the sender may rebuild the offset table
    and pad a fragment to even length).
    """
    a, b = pydicom.dcmread(stored), pydicom.dcmread(sent)
    if b.file_meta.TransferSyntaxUID.is_compressed:
        assert a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID
    else:
        assert not a.file_meta.TransferSyntaxUID.is_compressed
    for ds in (a, b):
        for tag in [t for t in ds.keys() if t.element == 0]:
            del ds[tag]
    if b.file_meta.TransferSyntaxUID.is_encapsulated:
        assert _fragments(a.PixelData) == _fragments(b.PixelData)
        del a.PixelData, b.PixelData
    else:
        assert a.PixelData == b.PixelData
    assert a == b


def _fragments(encapsulated: bytes) -> list[bytes]:
    return [f.rstrip(b"\x00") for f in generate_fragments(encapsulated)][1:]  # after the offset table


def _completed(daemon: Daemon, study_uid: str) -> bool:
    """The study has left ``receiving`` (a worker may already have moved it past ``complete``)."""
    return daemon.study_state(study_uid) not in (None, "receiving")


def _spooled(daemon: Daemon, sop_uid: str) -> Path:
    rows = daemon.query("select path from instances where sop_instance_uid = ?", sop_uid)
    assert len(rows) == 1, f"{sop_uid}: expected one row, found {len(rows)}"
    return daemon.spool / rows[0][0]


def _send_raw(daemon: Daemon, data: bytes, sop_class: str, ts: str, calling: str = "PYNETDICOM") -> int | None:
    """Send a file's bytes (possibly malformed) with pynetdicom, which sends them undecoded.

    pynetdicom reads only the file meta group (for the context and the request's UIDs).
    Returns the status, or None when there was no response.
    """
    path = daemon.workdir / f"raw-{generate_uid()}.dcm"
    path.write_bytes(data)
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are (this process only)
    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", daemon.port, ae_title=daemon.aet)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        return None if not status else int(status.Status)
    finally:
        assoc.release()


def test_echo(daemon):
    assert echo("127.0.0.1", daemon.port, daemon.aet)


@pytest.mark.parametrize("name", US_FILES)
def test_shared_files_stored_exactly_as_received(daemon, shared_dicom, name):
    src = shared_dicom / name
    result = dcmsend(daemon.port, [src])
    assert result.returncode == 0, result.stderr
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    _same_as_sent(_spooled(daemon, ds.SOPInstanceUID), src)


@pytest.mark.parametrize("name", PYDICOM_US)
def test_pydicom_files_stored(daemon, tmp_path, name):
    """pydicom's and pydicom-data's US files; given fresh SOP Instance UIDs (two of them share one)."""
    ds = pydicom.dcmread(testdata(name))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    src = tmp_path / name
    ds.save_as(src)
    result = dcmsend(daemon.port, [src])
    assert result.returncode == 0, result.stderr
    _same_as_sent(_spooled(daemon, ds.SOPInstanceUID), src)


def test_storescu_uncompressed_family(daemon, shared_dicom):
    src = shared_dicom / "orthanc-PrivateTags.dcm"
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    copy = daemon.workdir / "copy.dcm"
    ds.save_as(copy)
    result = storescu(daemon.port, [copy])
    assert result.returncode == 0, result.stderr
    _spooled(daemon, ds.SOPInstanceUID)


def test_duplicate_is_idempotent(daemon, shared_dicom):
    src = shared_dicom / "orthanc-1.2.840.10008.1.2.4.50.dcm"
    for _ in range(2):
        assert dcmsend(daemon.port, [src]).returncode == 0
    uid = pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID
    assert daemon.query("select count(*) from instances where sop_instance_uid = ?", uid) == [(1,)]
    assert daemon.query("select count(*) from events where outcome = 'duplicate' and sop_instance_uid = ?", uid)[0][0] >= 1


def test_same_uid_in_another_transfer_syntax_keeps_the_first(daemon, shared_dicom):
    """dcm4che's palette echo exists as JPEG-LS and as RLE with one SOP Instance UID."""
    first, second = shared_dicom / "dcm4che-jpeg-ls-Palette.dcm", shared_dicom / "dcm4che-US-PAL-8-10x-echo"
    assert dcmsend(daemon.port, [first, second]).returncode == 0
    uid = pydicom.dcmread(second, stop_before_pixels=True).SOPInstanceUID
    _same_as_sent(_spooled(daemon, uid), first)


def test_study_completes_after_quiet_period_and_reopens(daemon, shared_dicom):
    ds = pydicom.dcmread(shared_dicom / "orthanc-1.2.840.10008.1.2.4.50.dcm")
    ds.StudyInstanceUID = study = generate_uid()
    paths = []
    for i in range(3):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(daemon.workdir / f"late{i}.dcm")
        ds.save_as(paths[-1])
    assert dcmsend(daemon.port, paths[:2]).returncode == 0
    wait_for(lambda: _completed(daemon, study), timeout=60, what="study completion")
    ((last, completed),) = daemon.query("select last_received_at, completed_at from studies "
                                        "where study_instance_uid = ?", study)
    waited = datetime.fromisoformat(completed) - datetime.fromisoformat(last)
    assert waited.total_seconds() >= daemon.config["completion"]["quiet_period_s"]
    assert dcmsend(daemon.port, paths[2:]).returncode == 0
    assert daemon.query("select state, generation, instance_count from studies where study_instance_uid = ?",
                        study)[0][1] == 2
    wait_for(lambda: _completed(daemon, study), timeout=60, what="completion after reopening")
    assert daemon.query("select instance_count from studies where study_instance_uid = ?", study) == [(3,)]


def test_open_association_keeps_study_receiving(daemon, shared_dicom):
    ds = pydicom.dcmread(shared_dicom / "orthanc-1.2.840.10008.1.2.4.50.dcm")
    ds.StudyInstanceUID = study = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ae = AE(ae_title="SLOWSENDER")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", daemon.port, ae_title=daemon.aet)
    try:
        assert assoc.send_c_store(ds).Status == 0
        wait_for(lambda: daemon.query("select count(*) from instances i join studies s on s.id = i.study_id "
                                      "where s.study_instance_uid = ?", study) == [(1,)], what="instance row")
        time.sleep(3.0)  # twice the quiet period, association still open
        assert daemon.study_state(study) == "receiving"
    finally:
        assoc.release()
    wait_for(lambda: _completed(daemon, study), timeout=60, what="completion after release")


# -- bad input: each gets its status and the daemon keeps serving ----------------------------

def _valid_bytes(shared_dicom: Path) -> tuple[pydicom.Dataset, bytes]:
    ds = pydicom.dcmread(shared_dicom / "dcm4che-YBR_422.dcm")
    ds.SOPInstanceUID = generate_uid()
    buf = io.BytesIO()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(buf, enforce_file_format=True)
    return ds, buf.getvalue()


def test_truncated_dataset_is_refused(daemon, shared_dicom):
    ds, data = _valid_bytes(shared_dicom)
    status = _send_raw(daemon, data[: len(data) // 3], UltrasoundImageStorage, "1.2.840.10008.1.2.1")
    assert status is not None and 0xC000 <= status <= 0xCFFF
    assert daemon.query("select count(*) from instances where sop_instance_uid = ?", ds.SOPInstanceUID) == [(0,)]
    assert echo("127.0.0.1", daemon.port, daemon.aet)


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_uid_is_refused(daemon, shared_dicom, keyword):
    ds = pydicom.dcmread(shared_dicom / "orthanc-1.2.840.10008.1.2.4.50.dcm")
    ds.SOPInstanceUID = generate_uid()
    delattr(ds, keyword)
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", daemon.port, ae_title=daemon.aet)
    try:
        assert assoc.send_c_store(ds).Status == 0xC220
    finally:
        assoc.release()
    assert daemon.query("select count(*) from instances where sop_instance_uid = ?", ds.SOPInstanceUID) == [(0,)]


@pytest.mark.parametrize("field", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_path_traversal_uid_is_refused(daemon, shared_dicom, field):
    ds, _ = _valid_bytes(shared_dicom)
    setattr(ds, field, "1.2.3/../../../../tmp/evil")
    buf = io.BytesIO()
    with pydicom.config.disable_value_validation():
        ds.save_as(buf, enforce_file_format=True)
    status = _send_raw(daemon, buf.getvalue(), UltrasoundImageStorage, "1.2.840.10008.1.2.1")
    assert status == 0xC220
    assert not any(p.name == "evil" or "evil" in p.name for p in daemon.workdir.rglob("*evil*"))
    assert echo("127.0.0.1", daemon.port, daemon.aet)


def test_sop_instance_uid_mismatch_is_refused(daemon, shared_dicom):
    ds = pydicom.dcmread(shared_dicom / "orthanc-1.2.840.10008.1.2.4.50.dcm")
    ds.SOPInstanceUID = generate_uid()
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", daemon.port, ae_title=daemon.aet)
    try:
        path = daemon.workdir / "mismatch.dcm"
        path.write_bytes(_raw_with_request_uid(ds))
        _config.STORE_SEND_CHUNKED_DATASET = True
        assert assoc.send_c_store(path).Status == 0xC221
    finally:
        assoc.release()


def _raw_with_request_uid(ds: pydicom.Dataset) -> bytes:
    """A file whose meta claims another SOP Instance UID than its dataset (pynetdicom sends the meta's)."""
    buf = io.BytesIO()
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.preamble = b"\x00" * 128
    ds.save_as(buf, enforce_file_format=False)  # as it is: the meta is not brought in line
    assert pydicom.dcmread(io.BytesIO(buf.getvalue())).file_meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID
    return buf.getvalue()


def test_wrong_called_ae_is_rejected(daemon):
    assert not echo("127.0.0.1", daemon.port, "NOTSONOSHOT")
    assert echo("127.0.0.1", daemon.port, daemon.aet)


def test_unknown_calling_ae_rejected(tmp_path):
    require_binary("echoscu")
    with Daemon(tmp_path, {"network": {"allowed_calling_ae_titles": ["MODALITY1"]}}) as d:
        pass_ = echo("127.0.0.1", d.port, d.aet, calling_aet="MODALITY1")
        assert pass_
        assert not echo("127.0.0.1", d.port, d.aet, calling_aet="INTRUDER")
        # the rejection is recorded by EVT_REJECTED's handler, which may run after echoscu has
        # read the A-ASSOCIATE-RJ and exited
        wait_for(lambda: d.query("select count(*) from events where kind = 'association' and "
                                 "outcome = 'rejected' and calling_ae_title = 'INTRUDER'") == [(1,)],
                 timeout=10, what="the rejection in the audit log")
        assert echo("127.0.0.1", d.port, d.aet, calling_aet="MODALITY1")


def test_disk_watermark_refuses_with_a700(tmp_path, shared_dicom):
    require_binary("dcmsend")
    with Daemon(tmp_path, {"storage": {"min_free_mb": 10**9}}) as d:
        src = shared_dicom / "orthanc-1.2.840.10008.1.2.4.50.dcm"
        result = dcmsend(d.port, [src])
        assert "with status REFUSED  : 1" in result.stdout + result.stderr
        assert d.query("select count(*) from events where outcome = 'status-0xA700'") == [(1,)]
        assert d.query("select count(*) from instances") == [(0,)]
        assert list(d.spool.glob("*/*/*.dcm")) == []
        assert echo("127.0.0.1", d.port, d.aet)


# -- Orthanc as the PACS that forwards a study -----------------------------------------------

def test_orthanc_forwards_a_study(tmp_path, shared_dicom):
    with Daemon(tmp_path / "sonoshot") as d, \
            Orthanc(tmp_path / "orthanc", modalities={"sonoshot": (d.aet, "127.0.0.1", d.port)}) as pacs:
        src = shared_dicom / "orthanc-Issue16.dcm"
        answer = pacs.upload(src)
        pacs.rest("/modalities/sonoshot/store", "POST", {"Resources": [answer["ParentStudy"]], "Synchronous": True})
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        stored = _spooled(d, ds.SOPInstanceUID)
        assert pydicom.dcmread(stored).StudyInstanceUID == ds.StudyInstanceUID
        assert d.query("select calling_ae_title from studies where study_instance_uid = ?",
                       ds.StudyInstanceUID) == [(pacs.aet,)]
        wait_for(lambda: _completed(d, ds.StudyInstanceUID), timeout=60, what="completion")


@pytest.mark.parametrize("sop_class", [UltrasoundImageStorage, UltrasoundMultiFrameImageStorage,
                                       EnhancedUSVolumeStorage, SecondaryCaptureImageStorage,
                                       ComprehensiveSRStorage])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50",
                                    "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
                                    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                                    "1.2.840.10008.1.2.5"])
def test_storage_contexts_accepted(daemon, sop_class, syntax):
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", daemon.port, ae_title=daemon.aet)
    try:
        assert assoc.is_established
        assert [(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts] == [(sop_class, syntax)]
    finally:
        assoc.release()


def test_maximum_associations_and_sigterm_drain(tmp_path):
    """Associations past network.max_associations are rejected (transient); SIGTERM exits 0."""
    with Daemon(tmp_path, {"network": {"max_associations": 1}}) as d:
        ae = AE(ae_title="FIRST")
        ae.add_requested_context("1.2.840.10008.1.1")
        first = ae.associate("127.0.0.1", d.port, ae_title=d.aet)
        assert first.is_established
        try:
            second = AE(ae_title="SECOND")
            second.add_requested_context("1.2.840.10008.1.1")
            refused = second.associate("127.0.0.1", d.port, ae_title=d.aet)
            assert refused.is_rejected and not refused.is_established
        finally:
            first.release()
        assert echo("127.0.0.1", d.port, d.aet)
        assert d.stop() == 0
        assert "stopping: draining work in progress" in d.log()


def test_study_workers_run_below_the_receiver(daemon):
    """The worker thread (and what it starts) has a higher nice value than the receiving threads."""
    nice = {}
    for task in Path(f"/proc/{daemon.process.pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        nice[int(task.name)] = int(fields[16])  # field 19 of stat: nice
    assert nice[daemon.process.pid] == 0
    assert sorted(set(nice.values())) == [0, 10], nice


def test_released_associations_are_recorded_as_released(daemon):
    """The peer's close can beat EVT_RELEASED now that the release answer goes out at once."""
    before = daemon.query("select max(id) from associations")[0][0] or 0
    for _ in range(10):
        assert echo("127.0.0.1", daemon.port, daemon.aet, calling_aet="RELEASER")
    wait_for(lambda: len(daemon.query("select id from associations where id > ? and ended_at is not null",
                                      before)) == 10, what="10 association rows closed")
    assert daemon.query("select distinct outcome from associations where id > ?", before) == [("released",)]
