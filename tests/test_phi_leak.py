"""No PHI in logs, metrics or the database.

Studies with known, distinctive patient names (Latin, Latin-1 and Cyrillic, UTF-8), IDs and birth
dates, planted into a real ultrasound file with fresh UIDs, go through the whole pipeline (a real
detector bundle, an Orthanc destination) with DEBUG JSON logging. Besides the normal path, one
instance has the patient's name burned into its image (the text detector finds and blanks it),
and one is malformed (refused at C-STORE). Labels are given through the web console (a finding
that names the patient is refused) and the CLI. Then every daemon log line, the /metrics
exposition, every row of every table, every console page (as each role) with its audit exports,
and the JSON of ``sonoshot performance``, ``drift`` and ``audit export`` are searched for the
names, IDs and birth dates in common formats.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from sonoshot.cli import main
from tests.console_client import ConsoleClient
from tests.peers import DCMTK_ENV, Orthanc, wait_for
from tests.scenarios import SMALL_US, acknowledged, http_get, pipeline, raw_send, storescu_args
from tests.util import free_port

PATIENTS = [
    # (PatientName, PatientID, PatientBirthDate, OtherPatientIDs)
    ("Zwinglivarth^Hieronymus^Quastor", "QX7734219K", date(1947, 3, 12), "ALTQX55190"),
    ("Ærøskøbing^Søren Åge", "ØK-558812", date(1983, 9, 21), "DKÆ771204"),
    ("Дмитриевская^Ярослава Игоревна", "RU99817723", date(2001, 11, 5), "СНИЛС4471"),
    ("Müller-Lüdenscheidt^Jörg", "DE-MLJ-48213", date(1962, 7, 30), "KVNR-X93817"),
]
CHARSET = "ISO_IR 192"  # UTF-8


def _needles(name: str, patient_id: str, born: date, other_id: str) -> list[re.Pattern]:
    words = [w for part in name.split("^") for w in re.split(r"[ \-]", part) if len(w) >= 4]
    family, given = name.split("^")[:2]
    texts = [name, f"{given} {family}", f"{family}, {given}", *words, patient_id, other_id]
    dates = [born.strftime(f) for f in ("%Y%m%d", "%Y-%m-%d", "%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y", "%Y/%m/%d")]
    return ([re.compile(re.escape(t), re.IGNORECASE) for t in texts]
            + [re.compile(rf"(?<!\d){re.escape(d)}(?!\d)") for d in dates])


def _plant(ds: pydicom.Dataset, patient: tuple, study: str | None = None) -> pydicom.Dataset:
    name, patient_id, born, other_id = patient
    ds.SpecificCharacterSet = CHARSET
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = name, patient_id, born.strftime("%Y%m%d")
    ds.OtherPatientIDs = other_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study or generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for tag in [t for t in ds.keys() if t.element == 0]:  # the source's group lengths go stale
        del ds[tag]
    return ds


def _burned_in(source: Path, text: str) -> pydicom.Dataset:
    """SMALL_US, uncompressed, with ``text`` burned into the image area (inside the pixel mask)."""
    ds = pydicom.dcmread(source)
    image = Image.fromarray(ds.pixel_array)  # RGB
    draw = ImageDraw.Draw(image)
    draw.rectangle((120, 200, 520, 280), fill=(0, 0, 0))
    draw.text((130, 210), text, fill=(255, 255, 255), font=ImageFont.load_default(size=44))
    ds.PixelData = np.asarray(image).tobytes()
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = "RGB"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _search(text: str, needles: list[re.Pattern]) -> list[str]:
    return [n.pattern for n in needles if n.search(text)]


def _db_text(daemon) -> dict[str, str]:
    """Every row of every table as text; JSON values decoded (no \\u escapes hide non-ASCII)."""
    out = {}
    tables = [t for (t,) in daemon.query("select name from sqlite_master where type = 'table'")]
    for table in tables:
        lines = []
        for row in daemon.query(f'select * from "{table}"'):
            values = []
            for value in row:
                if isinstance(value, bytes):
                    value = value.decode("utf-8", "replace")
                if isinstance(value, str):
                    try:
                        value = json.dumps(json.loads(value), ensure_ascii=False)
                    except ValueError:
                        pass
                values.append(str(value))
            lines.append(" | ".join(values))
        out[table] = "\n".join(lines)
    return out


ACCOUNTS = {"clara": ("clinician", "clinician-password-1"), "audrey": ("auditor", "auditor-password-22"),
            "adam": ("admin", "admin-password-333")}


def _cli(capsys, daemon, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["--config", str(daemon.config_path), *argv])
    out, err = capsys.readouterr()
    return code, out + err


def _console_texts(daemon, studies: dict[str, tuple], capsys, monkeypatch) -> dict[str, str]:
    """Labels through the console and the CLI, then every console page as each role and every
    export: {where: text}."""
    for name, (role, password) in ACCOUNTS.items():
        monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
        assert main(["--config", str(daemon.config_path), "users", "add", name, "--role", role,
                     "--password-stdin"]) == 0
    base = f"http://127.0.0.1:{daemon.config['console']['port']}"
    texts: dict[str, str] = {}
    clinician = ConsoleClient(base)
    assert clinician.login("clara", ACCOUNTS["clara"][1]) == 200
    uids = list(studies)
    for uid, (name, patient_id, born, _) in list(studies.items())[:2]:
        clinician.get(f"/studies/{uid}")
        for finding in (f"mass, {name.split('^')[0]}", f"see {patient_id}", f"born {born:%d.%m.%Y}"):
            _, page = clinician.post(f"/studies/{uid}/feedback", {"label": "abnormal", "finding": finding})
            assert "finding text refused" in page.decode()
            texts[f"refused feedback page {uid} {finding[:4]}"] = page.decode()
    assert daemon.query("select count(*) from feedback") == [(0,)]  # every PHI finding was refused
    clinician.get(f"/studies/{uids[0]}")
    clinician.post(f"/studies/{uids[0]}/feedback", {"label": "abnormal", "finding": "solid mass 8 mm"})
    code, out = _cli(capsys, daemon, "feedback", uids[1], "--label", "normal",
                     "--finding", f"{studies[uids[1]][0].split('^')[1].split()[0]} has a cyst")
    assert code == 1 and "refused" in out
    texts["cli feedback refusal"] = out
    csv_file = daemon.workdir / "labels.csv"
    csv_file.write_text("".join(f"{uid},normal,ris\n" for uid in uids[1:]))
    assert _cli(capsys, daemon, "feedback", "--csv", str(csv_file))[0] == 0
    assert daemon.query("select count(*) from feedback") == [(len(uids),)]
    pages = ["/", "/studies", "/performance", "/drift", "/queues", "/audit", "/performance/roc.png",
             "/performance/scores.png", "/drift/scores.png", "/audit/export?format=csv&since=7d",
             "/audit/export?format=json&since=7d", *[f"/studies/{uid}" for uid in uids]]
    for name, (role, password) in ACCOUNTS.items():
        client = clinician if name == "clara" else ConsoleClient(base)
        if client is not clinician:
            assert client.login(name, password) == 200
        for path in pages:
            status, body = client.get(path)
            assert status in (200, 403), (name, path, status)
            if status == 200 and not path.endswith(".png"):
                texts[f"console {path} as {role}"] = body.decode("utf-8", "replace")
    for uid in uids:  # the pages searched really are the studies' pages
        assert uid in texts[f"console /studies/{uid} as auditor"] and "Timeline" in texts[f"console /studies/{uid} as admin"]
    assert "study_instance_uid,patient_pseudonym" in texts["console /audit/export?format=csv&since=7d as auditor"]
    for argv in (("performance", "--format", "json"), ("performance", "--by", "scanner"), ("drift", "--format", "json"),
                 ("audit", "export", "--format", "json"), ("users", "list")):
        texts[f"sonoshot {' '.join(argv)}"] = _cli(capsys, daemon, *argv)[1]
    return texts


def test_no_phi_in_logs_metrics_database_or_console(tmp_path, shared_dicom, demo_bundle, capsys, monkeypatch):
    needles = [n for p in PATIENTS for n in _needles(*p)]
    pacs = Orthanc(tmp_path / "orthanc")
    daemon = pipeline(tmp_path / "sonoshot", demo_bundle,
                      [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}],
                      logging={"level": "DEBUG", "json": True},
                      console={"enabled": True, "port": free_port(), "secret_key_file": str(tmp_path / "console.key")})
    files: list[Path] = []
    studies: dict[str, tuple] = {}
    for i, patient in enumerate(PATIENTS):
        study = generate_uid()
        studies[study] = patient
        for j in range(2 if i == 0 else 1):
            path = tmp_path / f"p{i}-{j}.dcm"
            _plant(pydicom.dcmread(shared_dicom / SMALL_US), patient, study).save_as(path)
            files.append(path)
    # The first patient's name burned into one more image of its study: the text detector must blank it.
    burned = tmp_path / "burned.dcm"
    family = PATIENTS[0][0].split("^")[0].upper()
    first_study = next(iter(studies))
    _plant(_burned_in(shared_dicom / SMALL_US, family), PATIENTS[0], first_study).save_as(burned)
    files.append(burned)
    # A malformed instance of the second patient: refused (0xC230), its identity never logged.
    broken = tmp_path / "broken.dcm"
    ds = _plant(pydicom.dcmread(shared_dicom / SMALL_US), PATIENTS[1])
    ds.NumberOfFrames = 1
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = bytes(1000)
    ds["PixelData"].VR = "OB"
    ds.save_as(broken)
    for path in files:  # the plant worked: the files carry the identities searched for below
        assert _search(path.read_bytes().decode("utf-8", "replace"), needles)

    with pacs, daemon:
        for batch, extra in ((files[:-1], ("-xy",)), ([burned], ())):  # JPEG Baseline, then uncompressed
            result = subprocess.run(storescu_args(daemon.port, batch, extra=extra), env=DCMTK_ENV,
                                    capture_output=True, text=True, timeout=120)
            assert set(acknowledged(result.stderr).values()) == {"Success"}, result.stderr
        status = raw_send(daemon.port, broken)
        assert status is not None and 0xC000 <= status <= 0xCFFF
        wait_for(lambda: all(daemon.study_state(s) == "delivered" for s in studies), timeout=120, interval=0.3,
                 what=f"every study delivered: {daemon.query('select state, detail from studies')}")
        # The pipeline really handled these identities: the SRs carry them back to the PACS.
        for study, (name, patient_id, _, _) in studies.items():
            (sr,) = [i for i in pacs.instances_in_study(study) if i.get("Modality") == "SR"]
            assert sr["PatientName"] == name and sr["PatientID"] == patient_id
        (deid_status, reason), = daemon.query("select deid_status, deid_reason from instances "
                                              "where sop_instance_uid = ?", pydicom.dcmread(burned).SOPInstanceUID)
        assert deid_status == "ok", reason  # cleaned (name blanked and verified), not lost
        console = _console_texts(daemon, studies, capsys, monkeypatch)
        metrics_status, metrics = http_get(daemon, "/metrics")
        assert metrics_status == 200
        health = http_get(daemon, "/livez")[1].decode() + http_get(daemon, "/readyz")[1].decode()
    log = daemon.log()  # after the drain (SIGTERM) too

    leaks: dict[str, list[str]] = {}
    lines = [line for line in log.splitlines() if line.strip()]
    not_json = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
            assert isinstance(entry, dict) and {"time", "level", "logger", "message"} <= set(entry)
            text = line + "\n" + json.dumps(entry, ensure_ascii=False)
        except (ValueError, AssertionError):
            not_json.append(line)
            text = line
        if found := _search(text, needles):
            leaks[f"log line {number}: {line[:200]}"] = found
    if found := _search(metrics.decode("utf-8", "replace"), needles):
        leaks["/metrics"] = found
    if found := _search(health, needles):
        leaks["/livez, /readyz"] = found
    for where, text in console.items():
        if found := _search(text, needles):
            leaks[where] = found
    for table, text in _db_text(daemon).items():
        if found := _search(text, needles):
            leaks[f"table {table}"] = found
    assert not leaks, f"PHI found: {json.dumps(leaks, ensure_ascii=False, indent=1)}"
    assert any(json.loads(line)["level"] == "DEBUG" for line in lines if line not in not_json)
    assert not not_json, f"log lines that are not JSON: {not_json[:10]}"
