"""A breast ultrasound cine as a scanner would send it, made from a real BUSI lesion image.

The demo detector's scope is breast, and no DICOM breast ultrasound ships with the test data,
so the tests build one: a multi-frame JPEG Baseline instance (Ultrasound Multi-frame Image
Storage, MONOCHROME2) whose frames are a BUSI image drifting a few pixels per frame (probe
motion), with BodyPartExamined BREAST, a Sequence of Ultrasound Regions covering the image, and
fresh UIDs. ``malignant_106`` is not in the demo bundle's support set.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, UltrasoundMultiFrameImageStorage, generate_uid

LESION = "malignant_106"  # BUSI: a lesion the demo detector flags; its mask is masks/malignant_106.png
PATIENT = ("Moreau", "PID-48213")  # one name component, as some devices write it (no caret)


def lesion_frames(busi: Path, name: str = LESION, frames: int = 3, step: int = 4) -> list[np.ndarray]:
    """The BUSI image shifted right by ``step`` pixels per frame (edge columns repeated)."""
    image = np.asarray(Image.open(busi / "images" / "abnormal" / f"{name}.jpg").convert("L"))
    out = []
    for n in range(frames):
        shift = n * step
        out.append(np.concatenate([np.repeat(image[:, :1], shift, axis=1), image[:, :image.shape[1] - shift]],
                                  axis=1) if shift else image.copy())
    return out


def breast_cine(busi: Path, path: Path, name: str = LESION, frames: int = 3) -> Dataset:
    """Write the cine to ``path`` and return it."""
    pixels = lesion_frames(busi, name, frames)
    rows, columns = pixels[0].shape
    encoded = []
    for frame in pixels:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
        encoded.append(buffer.getvalue())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = PATIENT
    ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260301"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "ACC-BREAST-1", "1", ""
    ds.StudyDescription, ds.SeriesDescription = "US BREAST LEFT", "left breast"
    ds.Modality, ds.BodyPartExamined, ds.ImageLaterality = "US", "BREAST", "L"
    ds.Manufacturer, ds.ManufacturerModelName = "sonoshot tests", "BUSI cine"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ""
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames, ds.FrameTime, ds.FrameIncrementPointer = frames, 40.0, pydicom.tag.Tag("FrameTime")
    ds.LossyImageCompression = "01"
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = columns - 1, rows - 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX = region.PhysicalDeltaY = 0.01
    ds.SequenceOfUltrasoundRegions = [region]
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return ds
