"""C-STORE delivery against real peers: DCMTK storescp (plain and TLS), Orthanc, pynetdicom SCPs."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage, ImplicitVRLittleEndian, UltrasoundMultiFrameImageStorage
from pynetdicom import AE, evt

from sonoshot.cli import main
from sonoshot.config import Destination, TLSConfig
from sonoshot.dicom_io import send as send_module
from sonoshot.dicom_io.report import ImageScoreRef, QuarantinedRef, StudyResult, build_report
from sonoshot.dicom_io.send import (
    InstanceStatus,
    StoreResultValues,
    classify_store_status,
    echo,
    send_datasets,
    ssl_context,
)
from tests.peers import DCMTK_ENV, Orthanc, StoreSCP, wait_for
from tests.util import free_port, require_binary

CALLING = "SONOSHOT"


@pytest.fixture(scope="module")
def cine_path(shared_dicom: Path) -> Path:
    return shared_dicom / "orthanc-Issue16.dcm"  # 34-frame JPEG Baseline ultrasound


@pytest.fixture(scope="module")
def cine(cine_path: Path) -> Dataset:
    return pydicom.dcmread(cine_path)


@pytest.fixture(scope="module")
def sr(cine: Dataset) -> Dataset:
    image = ImageScoreRef(str(cine.SOPClassUID), str(cine.SOPInstanceUID), str(cine.SeriesInstanceUID),
                          0.81, (1, 17, 34))
    result = StudyResult(str(cine.StudyInstanceUID), 0.81, "abnormal", 0.5, (image,),
                         (QuarantinedRef("1.2.3.4.5", "burned-in text"),), "ab" * 32, "efficientnet-lite0",
                         "sonoshot few-shot", "0.1.0")
    return build_report([cine], result)


def _dest(port: int, ae_title: str, **kwargs) -> Destination:
    return Destination(name="pacs", ae_title=ae_title, host="127.0.0.1", port=port, **kwargs)


def test_storescp_receives_sr_and_image(tmp_path, cine, sr):
    with StoreSCP(tmp_path / "in") as scp:
        outcome = send_datasets(_dest(scp.port, scp.aet), [sr, cine], CALLING)
    assert outcome.delivered and not outcome.transient, outcome.detail
    assert [s.status for s in outcome.statuses] == [0x0000, 0x0000]
    received = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in (tmp_path / "in").iterdir()}
    assert set(received) == {sr.SOPInstanceUID, cine.SOPInstanceUID}
    stored_sr = received[sr.SOPInstanceUID]
    assert stored_sr.StudyInstanceUID == cine.StudyInstanceUID
    assert stored_sr.file_meta.TransferSyntaxUID == sr.file_meta.TransferSyntaxUID
    assert received[cine.SOPInstanceUID].file_meta.TransferSyntaxUID == cine.file_meta.TransferSyntaxUID


def test_echo_storescp_and_down_peer(tmp_path):
    with StoreSCP(tmp_path / "in") as scp:
        up = echo(_dest(scp.port, scp.aet), CALLING)
    assert (up.ok, up.status) == (True, 0x0000)
    down = echo(_dest(free_port(), "NOBODY"), CALLING, timeout_s=2)
    assert (down.ok, down.status) == (False, None)


def test_cli_echo(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SONOSHOT_CONFIG", raising=False)
    with StoreSCP(tmp_path / "in") as scp:
        assert main(["echo", f"{scp.aet}@127.0.0.1:{scp.port}"]) == 0
    assert "C-ECHO status 0x0000" in capsys.readouterr().out
    assert main(["echo", "--timeout", "1", f"NOBODY@127.0.0.1:{free_port()}"]) == 1
    assert main(["echo", "NOBODY-127.0.0.1"]) == 2


def test_destination_down_is_transient(sr):
    outcome = send_datasets(_dest(free_port(), "NOBODY"), [sr], CALLING, timeout_s=2)
    assert (outcome.delivered, outcome.transient) == (False, True)
    assert outcome.statuses == (InstanceStatus(sr.SOPInstanceUID, None, StoreResultValues.TRANSIENT),)
    assert "no association" in outcome.detail and "NOBODY@127.0.0.1" in outcome.detail


def test_orthanc_files_sr_in_the_original_study(tmp_path, cine_path, cine, sr):
    with Orthanc(tmp_path / "orthanc") as pacs:
        pacs.upload(cine_path)
        dest = _dest(pacs.dicom_port, pacs.aet)
        first = send_datasets(dest, [sr], CALLING)
        again = send_datasets(dest, [sr], CALLING)  # a re-send replaces, never duplicates
        assert first.delivered and again.delivered, (first.detail, again.detail)
        instances = pacs.instances_in_study(str(cine.StudyInstanceUID))
        srs = [i for i in instances if i["Modality"] == "SR"]
        assert len(instances) == 2 and len(srs) == 1
        assert srs[0]["SOPInstanceUID"] == sr.SOPInstanceUID
        assert srs[0]["StudyInstanceUID"] == cine.StudyInstanceUID
        assert srs[0]["PatientID"] == cine.PatientID
        stored = pydicom.dcmread(BytesIO(pacs.rest(f"/instances/{srs[0]['ID']}/file")))
        assert stored.VerificationFlag == "UNVERIFIED"
        assert stored.ContentSequence == sr.ContentSequence


class StatusSCP:
    """An in-process pynetdicom storage SCP answering each C-STORE with ``self.status``."""

    def __init__(self, sop_classes=(ComprehensiveSRStorage, UltrasoundMultiFrameImageStorage),
                 delay_s: float = 0.0, require_called_aet: bool = False) -> None:
        self.status = 0x0000
        self.delay_s = delay_s
        self.requested: list[tuple[str, list[str]]] = []
        self.ae = AE(ae_title="STATUSSCP")
        self.ae.require_called_aet = require_called_aet
        for sop_class in sop_classes:
            self.ae.add_supported_context(sop_class, [ImplicitVRLittleEndian, "1.2.840.10008.1.2.1",
                                                      "1.2.840.10008.1.2.4.50"])
        self.port = free_port()

    def _on_store(self, event) -> int:
        time.sleep(self.delay_s)
        return self.status

    def _on_requested(self, event) -> None:
        self.requested = [(str(cx.abstract_syntax), [str(s) for s in cx.transfer_syntax])
                          for cx in event.assoc.requestor.requested_contexts]

    def __enter__(self) -> "StatusSCP":
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._on_store), (evt.EVT_REQUESTED, self._on_requested)])
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def status_scp():
    with StatusSCP() as scp:
        yield scp


@pytest.mark.parametrize("status, delivered, transient", [
    (0xB000, True, False), (0xB006, True, False), (0xB007, True, False),
    (0xA700, False, True), (0xA7FF, False, True), (0x0110, False, True),
    (0xA900, False, False), (0xC000, False, False), (0x0122, False, False), (0x0124, False, False),
])
def test_peer_statuses(status_scp, sr, status, delivered, transient):
    status_scp.status = status
    outcome = send_datasets(_dest(status_scp.port, "STATUSSCP"), [sr], CALLING)
    assert (outcome.delivered, outcome.transient) == (delivered, transient), outcome.detail
    assert outcome.statuses[0].status == status
    assert f"{status:#06x}" in outcome.detail


def test_proposes_only_needed_contexts(status_scp, sr, cine):
    status_scp.status = 0x0000
    outcome = send_datasets(_dest(status_scp.port, "STATUSSCP"), [sr, cine, sr], CALLING)
    assert outcome.delivered
    assert status_scp.requested == [
        (ComprehensiveSRStorage, ["1.2.840.10008.1.2.1", ImplicitVRLittleEndian]),
        (UltrasoundMultiFrameImageStorage, ["1.2.840.10008.1.2.4.50"]),
    ]


def test_associations_send_without_nagle_delay(status_scp):
    """Each message's PDUs go out at once (TCP_NODELAY), not after the peer's delayed ACK."""
    assoc, detail = send_module._associate(_dest(status_scp.port, "STATUSSCP"), CALLING, 5.0,
                                           [(ComprehensiveSRStorage, [ImplicitVRLittleEndian])])
    assert assoc is not None, detail
    try:
        assert assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        assoc.release()


def test_dimse_timeout_is_transient(sr):
    with StatusSCP(delay_s=2.0) as scp:
        outcome = send_datasets(_dest(scp.port, "STATUSSCP"), [sr, sr], CALLING, timeout_s=0.5)
    assert (outcome.delivered, outcome.transient) == (False, True)
    assert [s.status for s in outcome.statuses] == [None, None]


def test_association_rejected_is_transient(sr):
    with StatusSCP(require_called_aet=True) as scp:
        outcome = send_datasets(_dest(scp.port, "WRONG_AET"), [sr], CALLING)
    assert (outcome.delivered, outcome.transient) == (False, True)
    assert "rejected" in outcome.detail and "Called AE title not recognised" in outcome.detail


def test_unsupported_sop_class_is_permanent(sr, cine):
    with StatusSCP(sop_classes=(UltrasoundMultiFrameImageStorage,)) as scp:
        outcome = send_datasets(_dest(scp.port, "STATUSSCP"), [cine, sr], CALLING)
    assert (outcome.delivered, outcome.transient) == (False, False)
    assert [(s.status, s.result) for s in outcome.statuses] == [
        (0x0000, StoreResultValues.DELIVERED), (None, StoreResultValues.PERMANENT)]


@pytest.mark.parametrize("status, result", [
    (None, StoreResultValues.TRANSIENT), (0x0000, StoreResultValues.DELIVERED),
    (0xB007, StoreResultValues.DELIVERED), (0xB001, StoreResultValues.TRANSIENT),
    (0xA7A0, StoreResultValues.TRANSIENT), (0xA9FF, StoreResultValues.PERMANENT),
    (0xCFFF, StoreResultValues.PERMANENT), (0x0117, StoreResultValues.PERMANENT),
    (0x0212, StoreResultValues.PERMANENT), (0x0213, StoreResultValues.TRANSIENT),
])
def test_classify_store_status(status, result):
    assert classify_store_status(status) is result


def test_classify_store_status_validation():
    with pytest.raises(TypeError, match='"status"'):
        classify_store_status("0xB000")
    with pytest.raises(ValueError, match='"status"'):
        classify_store_status(0x10000)


def test_send_argument_validation(sr):
    dest = _dest(104, "PACS")
    with pytest.raises(TypeError, match='"dest"'):
        send_datasets("PACS@127.0.0.1:104", [sr], CALLING)
    with pytest.raises(TypeError, match='"datasets"'):
        send_datasets(dest, sr, CALLING)
    with pytest.raises(TypeError, match='"datasets"'):
        send_datasets(dest, [b"DICM"], CALLING)
    with pytest.raises(ValueError, match='"datasets"'):
        send_datasets(dest, [], CALLING)
    bare = Dataset()
    bare.SOPClassUID, bare.SOPInstanceUID = ComprehensiveSRStorage, "1.2.3"
    with pytest.raises(ValueError, match="Transfer Syntax UID"):
        send_datasets(dest, [bare], CALLING)
    with pytest.raises(ValueError, match='"calling_ae_title"'):
        send_datasets(dest, [sr], "A" * 17)
    with pytest.raises(TypeError, match='"calling_ae_title"'):
        send_datasets(dest, [sr], None)
    with pytest.raises(ValueError, match='"timeout_s"'):
        send_datasets(dest, [sr], CALLING, timeout_s=0)
    with pytest.raises(ValueError, match='"tls"'):
        ssl_context(TLSConfig())


def test_destination_calling_ae_title_wins(status_scp, sr):
    status_scp.status = 0x0000
    status_scp.ae.require_calling_aet = ["TOWARDS_PACS"]
    try:
        outcome = send_datasets(_dest(status_scp.port, "STATUSSCP", calling_ae_title="TOWARDS_PACS"), [sr], CALLING)
        refused = send_datasets(_dest(status_scp.port, "STATUSSCP"), [sr], CALLING)
    finally:
        status_scp.ae.require_calling_aet = []
    assert outcome.delivered, outcome.detail
    assert refused.transient and "Calling AE title not recognised" in refused.detail


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A private CA, a server certificate for 127.0.0.1 and a client certificate (EC P-256)."""
    require_binary("openssl")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test CA",
             cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d


def test_tls_to_storescp(tmp_path, pki, sr):
    require_binary("storescp")
    port, out = free_port(), tmp_path / "in"
    out.mkdir()
    scp = subprocess.Popen(
        ["storescp", "--aetitle", "TLSSCP", "--output-directory", str(out), "+tls", str(pki / "server.key"),
         str(pki / "server.crt"), "--add-cert-file", str(pki / "ca.crt"), "--require-peer-cert", str(port)],
        env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tls = TLSConfig(certificate=str(pki / "client.crt"), private_key=str(pki / "client.key"),
                    ca_certificate=str(pki / "ca.crt"))
    try:
        wait_for(lambda: echo(_dest(port, "TLSSCP", tls=tls), CALLING, timeout_s=2).ok, what="storescp over TLS")
        outcome = send_datasets(_dest(port, "TLSSCP", tls=tls), [sr], CALLING)
        untrusted = send_datasets(_dest(port, "TLSSCP", tls=TLSConfig(
            certificate=str(pki / "client.crt"), private_key=str(pki / "client.key"),
            ca_certificate=str(pki / "client.crt"))), [sr], CALLING, timeout_s=2)
        plain = send_datasets(_dest(port, "TLSSCP"), [sr], CALLING, timeout_s=2)
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    assert outcome.delivered, outcome.detail
    assert [pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()] == [sr.SOPInstanceUID]
    assert (untrusted.delivered, untrusted.transient) == (False, True)  # server certificate not trusted
    assert (plain.delivered, plain.transient) == (False, True)


def test_tls_configuration_unusable_is_reported(sr, tmp_path):
    tls = TLSConfig(certificate=str(tmp_path / "missing.crt"), private_key=str(tmp_path / "missing.key"))
    outcome = send_datasets(_dest(free_port(), "PACS", tls=tls), [sr], CALLING)
    assert (outcome.delivered, outcome.transient) == (False, True)
    assert "TLS configuration unusable" in outcome.detail


def test_concurrent_sends_to_one_peer(status_scp, sr):
    status_scp.status = 0x0000
    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(
        send_datasets(_dest(status_scp.port, "STATUSSCP"), [sr], CALLING))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(outcomes) == 4 and all(o.delivered for o in outcomes)
