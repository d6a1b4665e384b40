"""keyimage.py
===========

A key image every PACS can display, beside the SR: a Secondary Capture (PS3.3 A.8.1, built with
highdicom's :class:`~highdicom.sc.SCImage`) in its own series of the original study, one RGB
frame showing the most anomalous scored frame with

* the anomaly map as a translucent colour overlay (OpenCV's TURBO colour map; a pixel's opacity
  grows with the square of its map value scaled to 0-1, so the upper part of the map shows and
  low values barely tint the image),
* the outline of each anomalous region (the SR's TID 1410 polygons) when the frame was flagged,
* burned-in text: "NOT FOR DIAGNOSTIC USE" above the image, the score, threshold, verdict,
  frame and algorithm below it, and the detector's description when it has one.

The pixels are the **de-identified** frame, the one the detector scored (burned-in text blanked),
under the **original** study's patient and study attributes, so the key image files into the
right study without copying the scanner's burned-in text a second time, and the map lines up with
exactly what was scored. Small frames are enlarged (an integer factor, to ``min_width`` columns)
so the text stays legible. Burned In Annotation is YES; Conversion Type WSD (workstation);
Modality OT, so a routing rule for ultrasound never sends our own output back through us.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from sonoshot import __version__
from sonoshot.dicom_io.documents import MANUFACTURER, check_uid, name_uid

SERIES_NUMBER = 9903
SERIES_DESCRIPTION = "sonoshot anomaly map - not for diagnostic use"
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
OUTLINE_RGB = (0, 255, 0)
WARNING_RGB = (255, 60, 60)
TEXT_RGB = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def key_image_sop_instance_uid(report_sop_instance_uid: str) -> str:
    """The deterministic SOP Instance UID of the key image that goes with a report."""
    return name_uid("key-image", report_sop_instance_uid)


def key_image_series_instance_uid(study_instance_uid: str, bundle_sha256: str) -> str:
    """The deterministic Series Instance UID of key images for one study and bundle."""
    return name_uid("key-image-series", study_instance_uid, bundle_sha256)


def _as_rgb8(frame: Any) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise TypeError(f'Argument "frame" must be a numpy.ndarray, got {type(frame).__name__}.')
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)) or min(frame.shape[:2]) < 1:
        raise ValueError(f'Argument "frame" must be (Rows, Columns) or (Rows, Columns, 3), got {frame.shape}.')
    if frame.dtype != np.uint8:  # more than 8 bits (or signed): stretch to the displayable range
        values = frame.astype(np.float32)
        low, high = float(values.min()), float(values.max())
        frame = ((values - low) * (255.0 / (high - low)) if high > low else values * 0).astype(np.uint8)
    return np.repeat(frame[:, :, None], 3, axis=2) if frame.ndim == 2 else frame


def _text_rows(canvas_width: int, lines: Sequence[str], scale: float, colour: tuple[int, int, int]) -> np.ndarray:
    """A black band holding ``lines`` of text, each shrunk until it fits the width."""
    height = int(math.ceil(30 * scale))
    band = np.zeros((height * len(lines) + height // 3, canvas_width, 3), np.uint8)
    for row, line in enumerate(lines):
        size, thickness = 0.7 * scale, max(1, int(round(scale * 1.5)))
        while size > 0.3 and cv2.getTextSize(line, _FONT, size, thickness)[0][0] > canvas_width - 12:
            size *= 0.9
        cv2.putText(band, line, (6, height * (row + 1) - height // 4), _FONT, size, colour, thickness, cv2.LINE_AA)
    return band


def render_key_image(frame: np.ndarray, anomaly: np.ndarray, outlines: Sequence[np.ndarray],
                     caption: Sequence[str], alpha: float = 0.45, min_width: int = 640) -> np.ndarray:
    """The key image's pixels: ``frame`` under the translucent map, outlines and burned-in text.

    Parameters
    ----------
    frame : numpy.ndarray
        The de-identified frame, ``(Rows, Columns)`` or ``(Rows, Columns, 3)`` RGB; values other
        than uint8 are stretched to 0-255.
    anomaly : numpy.ndarray
        ``(Rows, Columns)`` anomaly map in the frame's pixel grid.
    outlines : Sequence[numpy.ndarray]
        Closed ``(N, 2)`` (column, row) polygons in PS3.3 C.18.6.1.1 pixel coordinates.
    caption : Sequence[str]
        Lines of text under the image (ASCII); "NOT FOR DIAGNOSTIC USE" is always written above it.
    alpha : float
        Opacity of the overlay where the map is at its maximum, in (0, 1].
    min_width : int
        The image is enlarged by an integer factor to at least this many columns.

    Returns
    -------
    numpy.ndarray
        ``(rows, columns, 3)`` uint8 RGB.

    Raises
    ------
    TypeError, ValueError
        If ``frame`` or ``anomaly`` has the wrong type or shape, ``anomaly`` is not finite,
        ``alpha`` is outside (0, 1], or a caption line is not ASCII.
    """
    rgb = _as_rgb8(frame)
    if not isinstance(anomaly, np.ndarray) or anomaly.shape != rgb.shape[:2]:
        raise ValueError(f'Argument "anomaly" must be a numpy.ndarray of shape {rgb.shape[:2]}.')
    values = anomaly.astype(np.float32)
    if not np.isfinite(values).all():
        raise ValueError('Argument "anomaly" must hold finite values.')
    if not 0 < alpha <= 1:
        raise ValueError(f'Argument "alpha" must be in (0, 1], got {alpha}.')
    if not all(isinstance(line, str) and line.isascii() for line in caption):
        raise ValueError('Argument "caption" must hold ASCII str lines (the burned-in font is ASCII).')
    factor = max(1, math.ceil(min_width / rgb.shape[1]))
    size = (rgb.shape[1] * factor, rgb.shape[0] * factor)
    image = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR).astype(np.float32)
    low, high = float(values.min()), float(values.max())
    level = (values - low) / (high - low) if high > low else np.zeros_like(values)
    level = cv2.resize(level, size, interpolation=cv2.INTER_LINEAR)
    colours = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[:, :, ::-1]  # BGR -> RGB
    opacity = (alpha * level ** 2)[:, :, None]  # the upper part of the map shows, the rest barely tints
    image = (image * (1 - opacity) + colours.astype(np.float32) * opacity).round().astype(np.uint8)
    for outline in outlines:
        points = np.asarray(outline, dtype=np.float32).reshape(-1, 2) * factor  # pixel centres scale too
        cv2.polylines(image, [np.round(points).astype(np.int32).reshape(-1, 1, 2)], True, OUTLINE_RGB,
                      max(2, factor), cv2.LINE_AA)
    scale = image.shape[1] / 640
    top = _text_rows(image.shape[1], [NOT_FOR_DIAGNOSTIC_USE], scale, WARNING_RGB)
    bottom = _text_rows(image.shape[1], list(caption), scale, TEXT_RGB) if caption else np.zeros((0,) + image.shape[1:],
                                                                                                   np.uint8)
    return np.ascontiguousarray(np.vstack([top, image, bottom]))


def build_key_image(original: Dataset, pixels: np.ndarray, sop_instance_uid: str, series_instance_uid: str,
                    instance_number: int, source_frame: int | None, algorithm_name: str) -> hd.sc.SCImage:
    """The Secondary Capture holding ``pixels`` in the original's study.

    Parameters
    ----------
    original : pydicom.dataset.Dataset
        The received instance the frame comes from (pixel data optional): patient, study and
        the Source Image Sequence reference are taken from it.
    pixels : numpy.ndarray
        ``(rows, columns, 3)`` uint8 RGB, as from :func:`render_key_image`.
    sop_instance_uid, series_instance_uid : str
        See :func:`key_image_sop_instance_uid` and :func:`key_image_series_instance_uid`.
    instance_number : int
    source_frame : int or None
        1-based frame number of the shown frame in ``original``, None for a single-frame one.
    algorithm_name : str
        Written as Manufacturer's Model Name.

    Returns
    -------
    highdicom.sc.SCImage
        Explicit VR Little Endian, Burned In Annotation YES.

    Raises
    ------
    TypeError, ValueError
        If ``pixels`` is not uint8 RGB, a UID is malformed or the frame number is out of range.
    """
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError('Argument "pixels" must be a (rows, columns, 3) uint8 RGB array.')
    check_uid("sop_instance_uid", sop_instance_uid)
    check_uid("series_instance_uid", series_instance_uid)
    frames = int(original.get("NumberOfFrames") or 1)
    if source_frame is not None and not 1 <= source_frame <= frames:
        raise ValueError(f'Argument "source_frame" must be in 1..{frames}, got {source_frame}.')
    laterality = original.get("Laterality") or original.get("ImageLaterality") or ""
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=original, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=series_instance_uid, series_number=SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid, instance_number=instance_number, manufacturer=MANUFACTURER,
        patient_orientation=("A", "F"),  # replaced below: highdicom requires a value, ultrasound has none
        laterality=laterality if laterality in ("R", "L") else None,
        transfer_syntax_uid=ExplicitVRLittleEndian, series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=algorithm_name, software_versions=__version__,
    )
    image.PatientOrientation = original.get("PatientOrientation", "")  # Type 2: empty when unknown
    if "Laterality" not in image:
        image.Laterality = ""  # Type 2C: unknown whether the body part is paired
    image.SeriesDate, image.SeriesTime = image.ContentDate, image.ContentTime  # PACS list a series by its date
    image.BurnedInAnnotation = "YES"
    image.ConversionType = "WSD"  # workstation (PS3.3 C.8.6.1)
    where = f"frame {source_frame}" if source_frame is not None else "the image"
    image.DerivationDescription = (f"anomaly map over {where} of the de-identified instance; "
                                   f"{NOT_FOR_DIAGNOSTIC_USE.lower()}")
    source = Dataset()
    source.ReferencedSOPClassUID = original.SOPClassUID
    source.ReferencedSOPInstanceUID = original.SOPInstanceUID
    if source_frame is not None:
        source.ReferencedFrameNumber = source_frame
    image.SourceImageSequence = DicomSequence([source])
    if original.get("LossyImageCompression") == "01":  # derived from lossy pixels (PS3.3 C.7.6.1.1.5)
        image.LossyImageCompression = "01"
    return image
