"""An adversarial de-identification corpus built from real files, with its answer key.

Each case starts from a real ultrasound instance and plants PHI where de-identification tools
miss it. ``ANSWERS`` says what must happen to each planted element: removed, pseudonymised,
keyed, shifted, cleaned or kept.
"""

from __future__ import annotations

import io
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
