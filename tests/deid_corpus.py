"""An adversarial de-identification corpus built from real files, with its answer key.

Each case starts from a real ultrasound instance and plants PHI where de-identification tools
miss it. ``ANSWERS`` says what must happen to each planted element: removed, pseudonymised,
keyed, shifted, cleaned or kept.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence

from sonoshot.dicom_io.pixels import iter_frames

NAME = "Kovacs^Ilona"
BURNED = "KOVACS ILONA"
PATIENT_ID = "ID-778899"
BIRTH = "19700315"
ACCESSION = "ACC-44321"
INSTITUTION = "Szent Lukacs Korhaz"
PHI = ("kovacs", "ilona", PATIENT_ID.lower(), BIRTH, ACCESSION.lower(), "szent lukacs")
FRAMES = 6


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def burn_in(frames: list[np.ndarray], text: str, xy: tuple[int, int]) -> list[np.ndarray]:
    """Draw ``text`` in white at ``xy`` on every frame (as a device would)."""
    font = ImageFont.load_default(size=18)
    burned = []
    for frame in frames:
        image = Image.fromarray(frame)
        ImageDraw.Draw(image).text(xy, text, fill=(255, 255, 255), font=font)
        burned.append(np.asarray(image))
    return burned


def jpeg_baseline(frames: list[np.ndarray]) -> bytes:
    """Encapsulated JPEG Baseline frames, YBR_FULL_422 (4:2:2) like an ultrasound device."""
    encoded = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=95, subsampling=1)
        encoded.append(buffer.getvalue())
    return encapsulate(encoded)


def planted(source: Path) -> pydicom.FileDataset:
    """``orthanc-Issue16.dcm`` (JPEG, 2 valid regions), cut to 6 frames, PHI planted everywhere."""
    ds = pydicom.dcmread(source)
    frames = burn_in(list(iter_frames(ds, range(FRAMES))), BURNED, (150, 408))
    ds.PixelData = jpeg_baseline(frames)
    ds.NumberOfFrames = FRAMES
    ds.preamble = b"Kovacs Ilona ID-778899".ljust(128, b"\0")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH
    ds.PatientSex = "F"
    ds.PatientAge = "054Y"
    ds.AccessionNumber = ACCESSION
    ds.InstitutionName = INSTITUTION
    ds.ReferringPhysicianName = "Nagy^Bela"
    ds.OtherPatientNames = ["Kovacs^Ilona", "Kiss^Ilona"]
    ds.StudyDescription = "Follow-up Kovacs Ilona ID-778899"
    ds.ImageComments = "scan for Ilona"
    ds.StudyDate = "20200314"
    ds.AcquisitionDateTime = "20200314101112.123+0100"
    ds.InstanceCreationDate = "2020"  # partial, as old devices write
    ds.CalibrationDate = ["20200101", "20200202"]  # multi-valued
    ds.DeviceSerialNumber = "SN-1234"
    ds.private_block(0x0009, "ACME 1.0", create=True).add_new(0x01, "LO", "Kovacs Ilona")
    ds.RequestAttributesSequence = Sequence([_item(
        RequestedProcedureID="RQ-5566",
        ReferencedStudySequence=Sequence([_item(ReferencedSOPInstanceUID="1.2.3.4.5.6")]),
    )])
    ds.ReferencedPatientSequence = Sequence([_item(
        OtherPatientIDsSequence=Sequence([_item(PatientID=PATIENT_ID, IssuerOfPatientID="HOSP")]),
    )])
    ds.ReferencedImageSequence = Sequence([_item(
        ReferencedSOPClassUID=ds.SOPClassUID,
        ReferencedSOPInstanceUID="1.2.3.4.5.7",
        PurposeOfReferenceCodeSequence=Sequence([_item(
            CodeValue="121311", CodingSchemeDesignator="DCM", CodeMeaning="Localizer",
            ContentCreatorName=NAME,  # a name three levels down in a kept sequence
        )]),
    )])
    ds.OriginalAttributesSequence = Sequence([_item(
        ModifiedAttributesSequence=Sequence([_item(PatientName=NAME)]),
        AttributeModificationDateTime="20200314101112", ModifyingSystem="PACS",
        SourceOfPreviousValues="", ReasonForTheAttributeModification="COERCE",
    )])
    icon = _item(Rows=1, Columns=1, SamplesPerPixel=1, BitsAllocated=8, BitsStored=8, HighBit=7,
                 PixelRepresentation=0, PhotometricInterpretation="MONOCHROME2")
    icon.add_new(0x7FE00010, "OB", b"\0\0")
    ds.IconImageSequence = Sequence([icon])
    ds.add_new(0x60000010, "US", 430)  # overlay rows
    ds.add_new(0x60003000, "OW", b"\0" * 8)  # overlay data
    ds.add_new(0x50000005, "US", 1)  # curve dimensions
    ds.add_new(0xFFFAFFFA, "SQ", Sequence([_item(MACIDNumber=1)]))  # digital signatures
    return ds


# path -> expected outcome; a path is keywords joined by "." with [n] for items
ANSWERS = {
    "PatientName": "pseudonym",
    "PatientID": "pseudonym",
    "PatientBirthDate": "emptied",
    "PatientSex": "emptied",
    "PatientAge": "removed",
    "AccessionNumber": "emptied",
    "InstitutionName": "emptied",
    "ReferringPhysicianName": "emptied",
    "OtherPatientNames": "removed",
    "StudyDescription": "cleaned",
    "ImageComments": "cleaned",
    "StudyDate": "shifted",
    "AcquisitionDateTime": "shifted",
    "InstanceCreationDate": "shifted",
    "CalibrationDate": "shifted",
    "DeviceSerialNumber": "emptied",
    "RequestAttributesSequence[0].RequestedProcedureID": "removed",  # sequence C: cleaned inside
    "RequestAttributesSequence[0].ReferencedStudySequence": "emptied",
    "ReferencedPatientSequence": "removed",
    "ReferencedImageSequence[0].ReferencedSOPInstanceUID": "keyed",
    "ReferencedImageSequence[0].ReferencedSOPClassUID": "kept",
    "ReferencedImageSequence[0].PurposeOfReferenceCodeSequence[0].ContentCreatorName": "emptied",
    "ReferencedImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeMeaning": "kept",
    "OriginalAttributesSequence": "removed",
    "IconImageSequence": "removed",
    "SOPInstanceUID": "keyed",
    "StudyInstanceUID": "keyed",
    "SeriesInstanceUID": "keyed",
    "SOPClassUID": "kept",
    "Manufacturer": "kept",
    "SequenceOfUltrasoundRegions[0].RegionLocationMaxX1": "kept",
}


# --- burned-in text: an adversarial pixel corpus drawn onto real frames ------------------------

#: Real frames the text is drawn on: (file, frame, box x0, y0, x1, y1 inclusive of speckle clear of
#: the scanner's own text).
#: Shared files are named plainly; pydicom-data files with a "pydicom:" prefix.
TEXT_BASES = (
    ("orthanc-Issue16.dcm", 0, (100, 60, 360, 300)),  # Hewlett-Packard echo, 430×480
    ("orthanc-jp2k91YBR-ICT.dcm", 0, (340, 130, 1150, 800)),  # GE LOGIQe phantom, 965×1660
    ("dcm4che-YBR_422.dcm", 0, (200, 80, 780, 380)),  # Esaote linear, 555×800
    ("pydicom:color3d_jpeg_baseline.dcm", 60, (110, 60, 470, 400)),  # SonoSite echo, 480×640
    ("pydicom:JPGLosslessP14SV1_1s_1f_8b.dcm", 0, (160, 180, 880, 600)),  # Philips EPIQ, monochrome
    ("pydicom:US1_UNCR.dcm", 0, (60, 112, 580, 330)),  # GE LOGIQ 700 with colour Doppler
)
#: What is drawn: names, IDs and dates as devices and operators burn them in.
TEXT_STRINGS = (
    "KOVACS, ILONA", "Ilona Kovacs", "SZABO^ZOLTAN", "Nagy Bela", "ID 778899", "MRN: 40021937",
    "ACC-44321", "15/03/1970", "1970-03-15", "DOB 03.15.1970", "Pt: Toth Eva", "Horvath Gabor",
)
#: (name, RGB): white, yellow and a dim grey.
TEXT_COLOURS = (("white", (255, 255, 255)), ("yellow", (255, 255, 0)), ("dim grey", (128, 128, 128)))
TEXT_SIZES = (10, 12, 14, 16, 20, 24)
_FONT_FILES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf")


@dataclass(frozen=True)
class DrawnText:
    """One string drawn onto a frame: where (inclusive box), how, and which pixels it changed."""

    text: str
    box: tuple[int, int, int, int]
    place: str  # "margin" or "tissue"
    colour: str
    size: int
    ink: np.ndarray  # bool (rows, columns): pixels the drawing changed visibly


@dataclass(frozen=True)
class TextCase:
    """A real frame with drawn text and its answer key."""

    base: str
    frame: np.ndarray  # RGB uint8
    tissue: tuple[int, int, int, int]
    drawn: tuple[DrawnText, ...]


def _font(size: int, number: int) -> ImageFont.FreeTypeFont:
    files = [f for f in _FONT_FILES if Path(f).is_file()]
    if number % 3 == 2 or not files:
        return ImageFont.load_default(size=size)  # Pillow's own font: there on every machine
    return ImageFont.truetype(files[number % len(files)], size)


def _free(occupied: np.ndarray, box: tuple[int, int, int, int], pad: int) -> bool:
    x0, y0, x1, y1 = box
    return not occupied[max(y0 - pad, 0):y1 + pad + 1, max(x0 - pad, 0):x1 + pad + 1].any()


def _place(rng: np.random.Generator, frame: np.ndarray, tissue: tuple[int, int, int, int], place: str,
           size: tuple[int, int], occupied: np.ndarray) -> tuple[int, int] | None:
    """A top-left corner for a ``size`` (w, h) box: on black margin, or on speckle inside the tissue."""
    rows, columns = frame.shape[:2]
    grey = frame.max(axis=2) if frame.ndim == 3 else frame
    tx0, ty0, tx1, ty1 = tissue
    w, h = size
    for _ in range(400):
        if place == "tissue":
            x, y = int(rng.integers(tx0, max(tx1 - w, tx0 + 1))), int(rng.integers(ty0, max(ty1 - h, ty0 + 1)))
        else:
            x, y = int(rng.integers(0, max(columns - w, 1))), int(rng.integers(0, max(rows - h, 1)))
        box = (x, y, x + w - 1, y + h - 1)
        if box[2] >= columns or box[3] >= rows or not _free(occupied, box, 6):
            continue
        patch = grey[y:y + h, x:x + w]
        inside = tx0 <= x and x + w - 1 <= tx1 and ty0 <= y and y + h - 1 <= ty1
        if place == "margin" and not inside and patch.max() < 40:
            return x, y
        if place == "tissue" and inside and patch.mean() > 25:
            return x, y
    return None


def text_cases(shared_dicom: Path, testdata: Callable[[str], Path], variants: int = 4, per_place: int = 3,
               seed: int = 10) -> list[TextCase]:
    """Real frames with names, IDs and dates drawn in the margins and inside the tissue.

    Every base frame of :data:`TEXT_BASES` gets ``variants`` copies, each with ``per_place``
    strings on black margin and ``per_place`` on speckle inside the tissue box, cycling
    through :data:`TEXT_COLOURS` and :data:`TEXT_SIZES` (10 to 24 px) and two fonts.
    """
    rng = np.random.default_rng(seed)
    cases, number = [], 0
    for name, index, tissue in TEXT_BASES:
        path = testdata(name.removeprefix("pydicom:")) if name.startswith("pydicom:") else shared_dicom / name
        (base,) = iter_frames(pydicom.dcmread(path), [index])
        base = np.repeat(base[:, :, None], 3, axis=2) if base.ndim == 2 else base
        for _variant in range(variants):
            image = Image.fromarray(base.copy())
            occupied = np.zeros(base.shape[:2], bool)
            drawn = []
            for place in ("margin", "tissue") * per_place:
                text = TEXT_STRINGS[number % len(TEXT_STRINGS)]
                colour_name, colour = TEXT_COLOURS[number % len(TEXT_COLOURS)]
                size = TEXT_SIZES[(number // len(TEXT_COLOURS)) % len(TEXT_SIZES)]
                font = _font(size, number)
                number += 1
                left, top, right, bottom = font.getbbox(text)
                corner = _place(rng, base, tissue, place, (right - left + 1, bottom - top + 1), occupied)
                if corner is None:
                    continue
                before = np.asarray(image).astype(int)
                ImageDraw.Draw(image).text((corner[0] - left, corner[1] - top), text, fill=colour, font=font)
                after = np.asarray(image).astype(int)
                ink = np.abs(after - before).max(axis=2) > 24
                box = (corner[0], corner[1], corner[0] + right - left, corner[1] + bottom - top)
                occupied[box[1]:box[3] + 1, box[0]:box[2] + 1] = True
                drawn.append(DrawnText(text, box, place, colour_name, size, ink))
            cases.append(TextCase(name, np.asarray(image).copy(), tissue, tuple(drawn)))
    return cases


def text_instance(case: TextCase, template: Path, frames: int = 2) -> pydicom.FileDataset:
    """A JPEG Baseline US instance of ``frames`` copies of the case's frame, without regions.

    The header comes from ``template`` (a real US file) with every identifying value replaced
    by the corpus' own, so the drawn names are the only PHI in the pixels.
    """
    ds = pydicom.dcmread(template)
    ds.PixelData = jpeg_baseline([case.frame] * frames)
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = case.frame.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    for keyword in ("SequenceOfUltrasoundRegions", "FrameIncrementPointer", "FrameTime"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Kovacs^Ilona", PATIENT_ID, "19700315"
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[case.base, str(id(case))])
    return ds


# --- the real ultrasound files on hand -----------------------------------------------------------

#: Text burned into the pixels of the real files that their headers do not all carry (names,
#: clinic); every cleaned output is searched for all of them, whatever the file.
BURNED_ELSEWHERE = ("elek", "teszt", "lastname", "firstname", "eredita", "giuseppe", "scatamacchia",
                    "vittoria", "baptist", "westway", "szent")


def real_us_files(shared_dicom: Path, testdata: Callable[[str], Path]) -> list[Path]:
    """Every real ultrasound file here: the shared ones, then pydicom's and pydicom-data's test
    files whose Modality is US (their folders are listed, nothing is downloaded)."""
    folders = {testdata("examples_ybr_color.dcm").parent, testdata("color3d_jpeg_baseline.dcm").parent}
    found = []
    for folder in sorted(folders):
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - the folders hold non-DICOM files too
                continue
            if header.get("Modality") == "US":
                found.append(path)
    return sorted(p for p in shared_dicom.iterdir() if p.is_file()) + found
