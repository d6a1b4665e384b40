"""Scenario helpers shared by the reliability and PHI tests: small studies made from a real
ultrasound file, DCMTK storescu invocations and their logs, raw (undecoded) sends, a daemon
configured as the full pipeline, or with the packaged demo detector delivering to an Orthanc,
and the documents it sent there.
"""

from __future__ import annotations

import io
import re
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from tests.daemon import Daemon
from tests.peers import Orthanc

SMALL_US = "orthanc-1.2.840.10008.1.2.4.50.dcm"  # one JPEG Baseline ultrasound frame, 53 KB
# SMALL_US has no Sequence of Ultrasound Regions: a configured pixel mask (image area kept, the
# rest blanked) lets it be de-identified instead of quarantined.
SMALL_US_MASK = {"manufacturer": "ATL", "rows": 480, "columns": 640, "keep": [[64, 48, 575, 431]]}

_SENDING = re.compile(r"^I: Sending file: (.+?)\s*$")
_RESPONSE = re.compile(r"^I: Received Store Response \((.+)\)\s*$")


def make_study(source: Path, outdir: Path, count: int = 1, **tags) -> tuple[str, dict[Path, str]]:
    """``count`` instances of one new study (fresh Study/Series/SOP UIDs) from ``source``;
    ``tags`` (keyword=value) are set on each. Returns the Study Instance UID and file -> SOP UID."""
    outdir.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    files: dict[Path, str] = {}
    for i in range(count):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        path = outdir / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path)
        files[path] = ds.SOPInstanceUID
    return study, files


def storescu_args(port: int, files, called_aet: str = "SONOSHOT", calling_aet: str = "STORESCU",
                  extra: tuple[str, ...] = ("-xy",)) -> list[str]:
    """DCMTK storescu, verbose; ``-xy`` proposes JPEG Baseline (the small US file's own syntax)."""
    return ["storescu", "-v", "-aet", calling_aet, "-aec", called_aet, *extra,
            "127.0.0.1", str(port), *map(str, files)]


def acknowledged(log: str) -> dict[Path, str]:
    """storescu -v log -> {file: response text} for every file that got a C-STORE response."""
    out: dict[Path, str] = {}
    current: Path | None = None
    for line in log.splitlines():
        if m := _SENDING.match(line):
            current = Path(m.group(1))
        elif (m := _RESPONSE.match(line)) and current is not None:
            out[current] = m.group(1)
            current = None
    return out


def http_get(daemon: Daemon, path: str, timeout: float = 15.0) -> tuple[int, bytes]:
    url = f"http://127.0.0.1:{daemon.config['http']['port']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def pipeline(workdir: Path, bundle: Path | None, destinations: list[dict], **overrides) -> Daemon:
    """A daemon with a short quiet period, fast delivery retries and the given destinations."""
    config = {
        "completion": {"quiet_period_s": 0.5, "sweep_interval_s": 0.1},
        "deid": {"pixel_masks": [SMALL_US_MASK]},
        "delivery": {"destinations": destinations, "sweep_interval_s": 0.1, "backoff_initial_s": 0.2,
                     "backoff_max_s": 0.5},
    }
    if bundle is not None:
        config["detector"] = {"bundle": str(bundle)}
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value}
    return Daemon(workdir, config)


def orthanc_srs(pacs: Orthanc, study_uid: str) -> list[str]:
    """SOP Instance UIDs of the SR instances Orthanc holds for the study (distinct by construction)."""
    return [i["SOPInstanceUID"] for i in pacs.instances_in_study(study_uid) if i.get("Modality") == "SR"]


def raw_send(port: int, path: Path, called_aet: str = "SONOSHOT", calling_aet: str = "FUZZER") -> int | None:
    """C-STORE the file's bytes undecoded (pynetdicom's chunked mode); the status, None if none."""
    meta = pydicom.filereader.read_file_meta_info(path)
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    before = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=called_aet)
        assert assoc.is_established, f"association for {path.name} not established"
        try:
            response = assoc.send_c_store(path)
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = before
    return int(response.Status) if response and "Status" in response else None


def demo_pipeline(tmp_path: Path, pacs: Orthanc, **overrides) -> Daemon:
    """sonoshot with the packaged demo detector, delivering to ``pacs``, which may send to it."""
    config = {"completion": {"quiet_period_s": 0.5, "sweep_interval_s": 0.1},
              "detector": {"bundle": "demo"},
              "delivery": {"destinations": [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                                             "port": pacs.dicom_port}],
                           "sweep_interval_s": 0.2, "backoff_initial_s": 0.5, "backoff_max_s": 1.0}}
    config.update(overrides)
    daemon = Daemon(tmp_path / "sonoshot", config)
    pacs.modalities["sonoshot"] = (daemon.aet, "127.0.0.1", daemon.port)
    return daemon


def documents(pacs: Orthanc, study_uid: str, count: int) -> list[pydicom.Dataset]:
    """The instances sonoshot sent into the study (SR and key images), once there are ``count``."""
    ours = [pydicom.dcmread(io.BytesIO(pacs.rest(f"/instances/{i['ID']}/file")))
            for i in pacs.instances_in_study(study_uid) if i.get("Modality") in ("SR", "OT")]
    return ours if len(ours) == count else []
