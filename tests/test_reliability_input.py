"""Bad input, access control and load, through the network against the real daemon.

* Fuzz: a seeded corpus of mutated real ultrasound files (truncated elements, wrong VRs, huge
  lengths, bad UIDs, pixel data length mismatch, wrong frame count), each sent undecoded with
  pynetdicom (the file's bytes as they are). Every one must get a failure status or be stored
  and later quarantined; the daemon stays up and still processes a well-formed study afterwards.
* Access: an unknown calling AE title is rejected; DCMTK ``storescu +tls`` stores over mutual TLS.
* Load: 5 ``storescu`` senders at once, 200 instances each: nothing lost, no database errors.
"""

from __future__ import annotations

import copy
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.daemon import Daemon
from tests.pki import make_pki
from tests.peers import DCMTK_ENV, wait_for
from tests.scenarios import SMALL_US, SMALL_US_MASK, acknowledged, make_study, pipeline, raw_send, storescu_args
from tests.util import require_binary

SEED = int(os.environ.get("SONOSHOT_FUZZ_SEED", "6"))
CROP = (120, 160)  # rows, columns of the uncompressed fuzz base (real pixels cropped from SMALL_US)
CROP_MASK = {"manufacturer": "ATL", "rows": CROP[0], "columns": CROP[1], "keep": [[8, 8, 151, 111]]}
FAILURE = lambda status: 0xA700 <= status <= 0xA7FF or 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF  # noqa: E731


# --- the fuzz corpus ----------------------------------------------------------------------------

def _fresh(ds: pydicom.Dataset) -> pydicom.Dataset:
    ds = copy.deepcopy(ds)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def _uncompressed_base(source: Path) -> pydicom.Dataset:
    """The real ultrasound header with a real crop of its pixels, Explicit VR Little Endian RGB."""
    ds = pydicom.dcmread(source)
    pixels = np.ascontiguousarray(ds.pixel_array[100:100 + CROP[0], 200:200 + CROP[1]])
    for tag in [t for t in ds.keys() if t.element == 0]:  # stale group lengths
        del ds[tag]
    ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
    ds.Rows, ds.Columns = CROP
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset(ds.file_meta)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _bytes(ds: pydicom.Dataset, enforce: bool = True) -> bytes:
    from io import BytesIO
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=enforce)  # not enforced: the file meta is kept as set
    return buffer.getvalue()


def _element_offset(data: bytes, tag: tuple[int, int], vr: bytes) -> int:
    """Offset of an Explicit VR Little Endian element header (tag + VR) in the file bytes."""
    needle = struct.pack("<HH", *tag) + vr
    offset = data.find(needle, 132 + 12)  # after the preamble, 'DICM' and the meta group length
    assert offset > 0, f"{tag} {vr} not found"
    return offset


def _patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


def build_corpus(shared_dicom: Path, outdir: Path) -> dict[str, Path]:
    """~30 mutated real ultrasound files, seeded; name -> path. Each has its own study."""
    rng = random.Random(SEED)
    outdir.mkdir(parents=True)
    base = _uncompressed_base(shared_dicom / SMALL_US)
    jpeg = pydicom.dcmread(shared_dicom / SMALL_US)
    corpus: dict[str, bytes] = {}

    def raw(name: str, ds: pydicom.Dataset, mutate=None) -> None:
        data = _bytes(ds)
        corpus[name] = mutate(data) if mutate else data

    # Truncated: the file cut inside an element (header, value, or pixel data).
    for i in range(6):
        ds = _fresh(base)
        data = _bytes(ds)
        meta_end = 132 + 12 + struct.unpack("<I", data[140:144])[0]
        cut = rng.randrange(meta_end + 8, len(data) - 4)
        corpus[f"truncated-{i}-at-{cut}"] = data[:cut]
    corpus["truncated-jpeg"] = (lambda d: d[:len(d) * 2 // 3])(_bytes(_fresh(jpeg)))
    # Wrong VRs: the VR bytes of an element replaced (value left as it was).
    for name, tag, vr, new in [("rows-as-UL", (0x0028, 0x0010), b"US", b"UL"),
                               ("rows-as-SQ", (0x0028, 0x0010), b"US", b"SQ"),
                               ("columns-as-FD", (0x0028, 0x0011), b"US", b"FD"),
                               ("bits-as-SQ", (0x0028, 0x0100), b"US", b"SQ"),
                               ("study-uid-as-XX", (0x0020, 0x000D), b"UI", b"XX"),
                               ("pixeldata-as-US", (0x7FE0, 0x0010), b"OB", b"US")]:
        ds = _fresh(base)
        raw(f"wrong-vr-{name}", ds, lambda d, t=tag, v=vr, n=new: _patch(d, _element_offset(d, t, v) + 4, n))
    # Huge lengths: a short-VR length of 0xFFFF, or a long one far beyond the file.
    for name, tag, vr, length in [("patient-name", (0x0010, 0x0010), b"PN", struct.pack("<H", 0xFFFF)),
                                  ("rows", (0x0028, 0x0010), b"US", struct.pack("<H", 0xFFF0)),
                                  ("modality", (0x0008, 0x0060), b"CS", struct.pack("<H", 0x7FFF))]:
        raw(f"huge-length-{name}", _fresh(base), lambda d, t=tag, v=vr, n=length: _patch(d, _element_offset(d, t, v) + 6, n))
    for name, value in [("pixeldata-4g", 0xFFFFFFF0), ("pixeldata-2x", 2 * CROP[0] * CROP[1] * 3)]:
        raw(f"huge-length-{name}", _fresh(base),
            lambda d, n=value: _patch(d, _element_offset(d, (0x7FE0, 0x0010), b"OB") + 8, struct.pack("<I", n)))
    # Bad UIDs (the request's Affected SOP Instance UID is the file meta's, kept consistent).
    for name, keyword, value in [("sop-letters", "SOPInstanceUID", "1.2.abc.4"),
                                 ("sop-traversal", "SOPInstanceUID", "../../../etc/passwd"),
                                 ("sop-too-long", "SOPInstanceUID", "1." + "2" * 70),
                                 ("study-empty", "StudyInstanceUID", ""),
                                 ("series-slash", "SeriesInstanceUID", "1.2/3.4"),
                                 ("study-traversal", "StudyInstanceUID", "..")]:
        ds = _fresh(base)
        ds[keyword].validation_mode = pydicom.config.IGNORE
        with pydicom.config.disable_value_validation():
            setattr(ds, keyword, value)
            if keyword == "SOPInstanceUID" and len(value) <= 64:  # pynetdicom sends no longer request UID
                ds.file_meta.MediaStorageSOPInstanceUID = value
            data = _bytes_lenient(ds)
        corpus[f"bad-uid-{name}"] = data
    # Pixel data length mismatch (uncompressed: rows x columns x samples must match).
    for name, delta in [("short-by-1000", -1000), ("long-by-1200", 1200), ("empty", None)]:
        ds = _fresh(base)
        ds.PixelData = b"" if delta is None else (ds.PixelData[:delta] if delta < 0 else ds.PixelData + b"\0" * delta)
        raw(f"pixel-length-{name}", ds)
    ds = _fresh(base)
    ds.Rows = CROP[0] + 40
    raw("pixel-length-rows-lie", ds)
    # Wrong frame count.
    for name, frames, src in [("uncompressed-5", 5, base), ("uncompressed-0", 0, base),
                              ("jpeg-3-of-1", 3, jpeg), ("jpeg-0", 0, jpeg), ("uncompressed-minus-1", -1, base)]:
        ds = _fresh(src)
        ds.NumberOfFrames = frames
        raw(f"frames-{name}", ds)
    ds = _fresh(base)
    ds.NumberOfFrames = 1  # written as "1 ", then made "x1"
    raw("frames-not-a-number", ds, lambda d: _patch(d, _element_offset(d, (0x0028, 0x0008), b"IS") + 8, b"x1"))

    paths = {}
    for name, data in corpus.items():
        path = outdir / f"{name}.dcm"
        path.write_bytes(data)
        paths[name] = path
    return paths


def _bytes_lenient(ds: pydicom.Dataset) -> bytes:
    before = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        return _bytes(ds, enforce=False)
    finally:
        pydicom.config.settings.writing_validation_mode = before


def test_fuzz_corpus_is_refused_or_quarantined_and_the_daemon_keeps_serving(tmp_path, shared_dicom,
                                                                             demo_bundle):
    corpus = build_corpus(shared_dicom, tmp_path / "corpus")
    assert len(corpus) >= 30
    daemon = pipeline(tmp_path / "sonoshot", demo_bundle, [],
                      deid={"pixel_masks": [SMALL_US_MASK, CROP_MASK]})
    outcomes: dict[str, int | None] = {}
    with daemon:
        for name, path in corpus.items():
            outcomes[name] = raw_send(daemon.port, path)
            assert daemon.process.poll() is None, f"the daemon died on {name}:\n{daemon.log()[-3000:]}"
        bad_status = {n: s for n, s in outcomes.items() if s is not None and s != 0 and not FAILURE(s)}
        assert not bad_status, f"statuses outside 0xA7xx/0xA9xx/0xCxxx: {bad_status}"
        # What was stored must be quarantined, never reported.
        stored = [n for n, s in outcomes.items() if s == 0]
        meta = {n: pydicom.filereader.read_file_meta_info(p) for n, p in corpus.items()}
        stored_sops = {str(meta[n].MediaStorageSOPInstanceUID) for n in stored}

        def settled():
            rows = daemon.query("select state from studies")
            return all(s in ("quarantined", "failed", "reported", "delivered", "ignored") for (s,) in rows)
        wait_for(settled, timeout=60, interval=0.3, what="stored fuzz instances to be processed")
        rows = daemon.query("select i.sop_instance_uid, i.deid_status, s.state from instances i "
                            "join studies s on s.id = i.study_id")
        assert {sop for sop, _, _ in rows} == stored_sops
        not_quarantined = {sop: (deid, state) for sop, deid, state in rows
                           if deid != "quarantined" and state != "quarantined"}
        names = {str(meta[n].MediaStorageSOPInstanceUID): n for n in stored}
        assert not not_quarantined, "stored and processed as if well-formed: " + ", ".join(
            f"{names[s]} ({v})" for s, v in not_quarantined.items())
        assert daemon.query("select count(*) from results where kind = 'scored'") == [(0,)]
        # Still serving: a well-formed study after the corpus is stored and processed.
        study, files = make_study(shared_dicom / SMALL_US, tmp_path / "good")
        result = subprocess.run(storescu_args(daemon.port, files), env=DCMTK_ENV, capture_output=True, text=True,
                                timeout=60)
        assert set(acknowledged(result.stdout + result.stderr).values()) == {"Success"}, result.stderr
        wait_for(lambda: daemon.study_state(study) in ("reported", "delivered"), timeout=60, interval=0.3,
                 what="the well-formed study to be reported")
        assert "Traceback" not in daemon.log(), daemon.log()[-4000:]
    print({n: None if s is None else f"0x{s:04X}" for n, s in outcomes.items()})



# --- access --------------------------------------------------------------------------------------

def test_unknown_calling_ae_is_rejected(tmp_path, shared_dicom):
    require_binary("storescu")
    daemon = Daemon(tmp_path / "sonoshot", {"network": {"allowed_calling_ae_titles": ["MODALITY1"]}})
    with daemon:
        _, files = make_study(shared_dicom / SMALL_US, tmp_path / "study")
        refused = subprocess.run(storescu_args(daemon.port, files, calling_aet="INTRUDER"), env=DCMTK_ENV,
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "Association Rejected" in refused.stderr, refused.stderr
        assert daemon.query("select count(*) from instances") == [(0,)]
        assert daemon.query("select calling_ae_title from events where kind = 'association' "
                            "and outcome = 'rejected'") == [("INTRUDER",)]
        allowed = subprocess.run(storescu_args(daemon.port, files, calling_aet="MODALITY1"), env=DCMTK_ENV,
                                 capture_output=True, text=True, timeout=60)
        assert allowed.returncode == 0, allowed.stderr
        assert daemon.query("select count(*) from instances") == [(1,)]


def test_tls_association_with_storescu(tmp_path, shared_dicom):
    require_binary("storescu", "openssl")
    pki = make_pki(tmp_path / "pki")
    daemon = Daemon(tmp_path / "sonoshot", {"network": {"tls": {
        "certificate": str(pki / "server.pem"), "private_key": str(pki / "server.key"),
        "ca_certificate": str(pki / "ca.pem")}}})
    _, files = make_study(shared_dicom / SMALL_US, tmp_path / "study")
    (sop,) = files.values()
    # Daemon.start checks readiness with a plain C-ECHO, which a TLS port cannot answer: start it by hand.
    log = open(daemon.log_path, "ab")
    process = subprocess.Popen([sys.executable, "-m", "sonoshot", "--config", str(daemon.config_path), "serve"],
                               stdout=log, stderr=subprocess.STDOUT, cwd=daemon.workdir)
    daemon.process = process
    try:
        wait_for(lambda: "sonoshot ready" in daemon.log() or process.poll() is not None, timeout=60,
                 interval=0.2, what="sonoshot ready")
        assert process.poll() is None, daemon.log()
        tls = ("-xy", "+tls", str(pki / "client.key"), str(pki / "client.pem"), "+cf", str(pki / "ca.pem"))
        result = subprocess.run(storescu_args(daemon.port, list(files), extra=tls), env=DCMTK_ENV,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and set(acknowledged(result.stderr).values()) == {"Success"}, result.stderr
        assert daemon.query("select sop_instance_uid from instances") == [(sop,)]
        # Without a client certificate (mutual TLS is required) and in plain TCP: no instance gets in.
        _, others = make_study(shared_dicom / SMALL_US, tmp_path / "others")
        anonymous = subprocess.run(storescu_args(daemon.port, list(others), extra=("-xy", "+tla", "+cf",
                                                                                   str(pki / "ca.pem"))),
                                   env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
        plain = subprocess.run(storescu_args(daemon.port, list(others)), env=DCMTK_ENV, capture_output=True,
                               text=True, timeout=60)
        assert anonymous.returncode != 0 and plain.returncode != 0
        assert daemon.query("select count(*) from instances") == [(1,)]
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=30)
        daemon.process = None


# --- load ----------------------------------------------------------------------------------------

SENDERS, PER_SENDER = 5, 200


def _load_files(shared_dicom: Path, outdir: Path) -> list[list[Path]]:
    """5 x 200 small valid instances (real US header, 64 x 64 real pixels), one study per sender."""
    base = _uncompressed_base(shared_dicom / SMALL_US)
    base.Rows = base.Columns = 64
    crop = np.frombuffer(base.PixelData, np.uint8).reshape(CROP[0], CROP[1], 3)
    base.PixelData = np.ascontiguousarray(crop[:64, :64]).tobytes()
    out = []
    for s in range(SENDERS):
        folder = outdir / f"sender{s}"
        folder.mkdir(parents=True)
        study, series = generate_uid(), generate_uid()
        files = []
        for i in range(PER_SENDER):
            base.StudyInstanceUID, base.SeriesInstanceUID = study, series
            base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            base.InstanceNumber = i + 1
            path = folder / f"{i:03d}.dcm"
            base.save_as(path, enforce_file_format=True)
            files.append(path)
        out.append(files)
    return out


def test_five_senders_at_once_lose_nothing(tmp_path, shared_dicom):
    require_binary("storescu")
    batches = _load_files(shared_dicom, tmp_path / "load")
    daemon = Daemon(tmp_path / "sonoshot", {"completion": {"quiet_period_s": 600}})
    with daemon:
        senders = [subprocess.Popen(storescu_args(daemon.port, files, calling_aet=f"LOAD{n}", extra=()),
                                    env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                   for n, files in enumerate(batches)]
        logs = [sender.communicate(timeout=240)[1] for sender in senders]
        for sender, log in zip(senders, logs):
            assert sender.returncode == 0, log[-2000:]
        responses = {}
        for log in logs:
            responses.update(acknowledged(log))
        assert len(responses) == SENDERS * PER_SENDER and set(responses.values()) == {"Success"}
        assert daemon.query("select count(*) from instances") == [(SENDERS * PER_SENDER,)]
        assert sorted(daemon.query("select instance_count from studies")) == [(PER_SENDER,)] * SENDERS
        spooled = [p for p in daemon.spool.rglob("*") if p.is_file() and ".incoming" not in p.parts]
        assert len(spooled) == SENDERS * PER_SENDER
        for (path,) in daemon.query("select path from instances"):
            assert (daemon.spool / path).is_file()
        assert daemon.process.poll() is None
    log = daemon.log()
    for marker in ("Traceback", "OperationalError", "database is locked", "IntegrityError"):
        assert marker not in log, log[log.find(marker) - 2000:log.find(marker) + 2000]
