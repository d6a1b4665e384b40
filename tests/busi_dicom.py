"""BUSI images as ultrasound DICOM studies for the validation tests: one RGB US Image Storage
instance per study (uncompressed, so the detector sees exactly the JPEG's decoded pixels), a
Sequence of Ultrasound Regions over the whole image, device attributes of a simulated scanner,
and made-up patient identities (the PHI the pipeline must keep out of the database)."""

from __future__ import annotations

import csv
import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, UltrasoundImageStorage, generate_uid

from sonoshot.model.evaluate import Example, read_manifest


@dataclass(frozen=True)
class Scanner:
    manufacturer: str
    model: str
    software: str
    probe: str
    brightness: int = 0  # added to every pixel (clipped)
    side: int | None = None  # resized to side x side


SITE_SCANNER = Scanner("SimSound", "Breast-500", "4.2.1", "L12-5")
NEW_SCANNER = Scanner("OtherVendor", "Vista-9", "1.0", "L15-7", brightness=70, side=384)


def choose(busi: Path, per_class: int, exclude_groups: set[str], skip: int = 4) -> list[Example]:
    """``per_class`` normal and abnormal BUSI examples, one per group, none of ``exclude_groups``
    (the bundle's support), spread evenly over the manifest."""
    chosen: list[Example] = []
    for label in (0, 1):
        pool, groups = [], set(exclude_groups)
        for example in read_manifest(busi):
            if example.label == label and example.group not in groups:
                pool.append(example)
                groups.add(example.group)
        step = max(len(pool) // per_class, 1)
        chosen += pool[skip % step::step][:per_class]
    return chosen


def support_groups(busi: Path, per_class: int = 4) -> set[str]:
    """Groups of the images tests.daemon.fit_demo_bundle fits on (the first per class, sorted)."""
    names = {label: sorted(p.name for p in (busi / "images" / label).iterdir())[:per_class]
             for label in ("normal", "abnormal")}
    with open(busi / "manifest.csv", newline="") as f:
        return {row["group"] for row in csv.DictReader(f)
                if Path(row["file"]).name in names[row["label"]]}


def study(busi: Path, example: Example, scanner: Scanner, out: Path, patient: int) -> tuple[str, Path]:
    """Write one study of one instance; returns its Study Instance UID and file."""
    with Image.open(busi / example.file) as im:
        image = im.convert("RGB")
    if scanner.side:
        image = image.resize((scanner.side, scanner.side), Image.BILINEAR)
    pixels = np.clip(np.asarray(image, dtype=np.int16) + scanner.brightness, 0, 255).astype(np.uint8)
    rows, columns = pixels.shape[:2]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = f"Validation^Patient{patient:04d}"  # no birth date: BUSI's burned-in calliper
    ds.PatientID = f"VAL{patient:06d}"  # numbers fuzzy-match dates, and OCR would quarantine the image
    ds.StudyDate = ds.ContentDate = datetime.date.today().strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = "101500"
    ds.AccessionNumber, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = f"ACC{patient:06d}", "1", 1, 1
    ds.Modality, ds.BodyPartExamined, ds.ReferringPhysicianName = "US", "BREAST", ""
    ds.Manufacturer, ds.ManufacturerModelName = scanner.manufacturer, scanner.model
    ds.SoftwareVersions, ds.TransducerData = scanner.software, scanner.probe
    ds.BurnedInAnnotation = "NO"
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = columns - 1, rows - 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = region.PhysicalDeltaY = 0.01
    ds.SequenceOfUltrasoundRegions = [region]
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 3, "RGB"
    ds.PlanarConfiguration, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 0, 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    path = out / f"{ds.SOPInstanceUID}.dcm"
    out.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds.StudyInstanceUID, path
