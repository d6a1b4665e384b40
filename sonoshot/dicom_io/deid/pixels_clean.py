"""pixels_clean.py
===============

Clean Pixel Data (PS3.15 E.3.1) for ultrasound: keep the image data inside the Sequence of
Ultrasound Regions, or inside a configured per-device mask when there are no usable regions,
and set every other pixel of every frame to black. Frames are decoded one at a time through
:mod:`sonoshot.dicom_io.pixels` and written RLE Lossless, so memory holds one decoded frame
plus the compressed output. The output's Photometric Interpretation is what was written (RGB
after YBR or PALETTE COLOR decoding), and Lossy Image Compression stays "01" when the source
was ever lossy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_encoder
from pydicom.uid import UID, RLELossless

from sonoshot.config import PixelMask

from ..pixels import RegionError, UltrasoundRegion, frame_count, frame_format, iter_frames, ultrasound_regions

Box = tuple[int, int, int, int]  # x0, y0, x1, y1, inclusive

# Transfer syntaxes whose encoding loses information (PS3.5 Section 8 and 10).
_LOSSY = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.100",
    "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103",
    "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.106",
    "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112",
})
_PALETTE_TAGS = (0x00281101, 0x00281102, 0x00281103, 0x00281104, 0x00281199, 0x00281201,
                 0x00281202, 0x00281203, 0x00281204, 0x00281221, 0x00281222, 0x00281223)


class PixelCleaningError(ValueError):
    """No usable keep area: regions missing or invalid and no configured mask matches."""


@dataclass(frozen=True)
class KeepArea:
    """The boxes of image data kept on every frame, and where they came from."""

    boxes: tuple[Box, ...]
    source: str  # "ultrasound regions", "pixel mask <n>" or "whole image (cleaning off)"


def _mask_matches(mask: PixelMask, ds: Dataset) -> bool:
    manufacturer = str(ds.get("Manufacturer", "")).lower()
    model = str(ds.get("ManufacturerModelName", "")).lower()
    return (
        bool(mask.manufacturer)
        and manufacturer.startswith(mask.manufacturer.lower())
        and model.startswith(mask.model.lower())
        and (mask.rows, mask.columns) == (int(ds.Rows), int(ds.Columns))
    )


def keep_area(ds: Dataset, clean: bool, masks: Sequence[PixelMask]) -> KeepArea:
    """Choose what to keep: the ultrasound regions, else the first matching mask.

    Raises
    ------
    PixelCleaningError
        If the regions are absent or invalid (never clipped) and no mask matches, or a matching
        mask has a box outside the image.
    """
    rows, columns = int(ds.Rows), int(ds.Columns)
    if not clean:
        return KeepArea(((0, 0, columns - 1, rows - 1),), "whole image (cleaning off)")
    try:
        regions = ultrasound_regions(ds)
        problem = "" if regions else "no Sequence of Ultrasound Regions"
    except RegionError as exc:
        regions, problem = [], str(exc)
    if regions:
        return KeepArea(tuple(r.bounds for r in regions), "ultrasound regions")
    for number, mask in enumerate(masks):
        if _mask_matches(mask, ds):
            try:
                boxes = [UltrasoundRegion(*box) for box in mask.keep]
            except (RegionError, TypeError) as exc:
                raise PixelCleaningError(f"pixel mask {number} is invalid: {exc}") from exc
            if not boxes or not all(b.fits(rows, columns) for b in boxes):
                raise PixelCleaningError(f"pixel mask {number} has no box or one outside the image")
            return KeepArea(tuple(b.bounds for b in boxes), f"pixel mask {number}")
    raise PixelCleaningError(f"{problem}, and no configured pixel mask matches this device and size")


def keep_mask(rows: int, columns: int, boxes: Sequence[Box]) -> np.ndarray:
    """Boolean ``(rows, columns)`` array, True inside any box."""
    mask = np.zeros((rows, columns), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1 + 1, x0:x1 + 1] = True
    return mask


def black(photometric: str, bits_stored: int) -> int:
    """The fill value that displays as black (the maximum for MONOCHROME1)."""
    return (1 << bits_stored) - 1 if photometric == "MONOCHROME1" else 0


def was_lossy(ds: Dataset) -> bool:
    """Whether the source's pixel data has ever been lossy compressed."""
    return str(ds.get("LossyImageCompression", "")) == "01" or str(ds.file_meta.TransferSyntaxUID) in _LOSSY


def write_clean_pixels(source: Dataset, out: Dataset, area: KeepArea) -> dict[str, object]:
    """Decode ``source`` frame by frame, blank outside ``area``, store RLE Lossless in ``out``.

    ``out`` gets the pixel data, the image pixel attributes that describe it, the RLE Lossless
    transfer syntax and the lossy compression history; the SOP Instance UID is not touched.

    Raises
    ------
    sonoshot.dicom_io.pixels.UndecodableError
        If the source pixel data cannot be decoded.
    """
    fmt = frame_format(source)
    mask = keep_mask(fmt.rows, fmt.columns, area.boxes)
    fill = black(fmt.photometric_interpretation, fmt.bits_stored)
    encoder = get_encoder(RLELossless)
    options = dict(
        rows=fmt.rows, columns=fmt.columns, samples_per_pixel=fmt.samples_per_pixel,
        bits_allocated=fmt.bits_allocated, bits_stored=fmt.bits_stored,
        pixel_representation=fmt.pixel_representation,
        photometric_interpretation=fmt.photometric_interpretation, number_of_frames=1,
        planar_configuration=0,
    )
    encoded = []
    for frame in iter_frames(source):
        frame[~mask] = fill
        encoded.append(encoder.encode(frame, **options))
    lossy = was_lossy(source)
    for tag in _PALETTE_TAGS:
        if tag in out:
            del out[tag]
    out.PhotometricInterpretation = fmt.photometric_interpretation
    out.SamplesPerPixel = fmt.samples_per_pixel
    if fmt.samples_per_pixel == 3:
        out.PlanarConfiguration = 0
    elif "PlanarConfiguration" in out:
        del out.PlanarConfiguration
    out.BitsAllocated = fmt.bits_allocated
    out.BitsStored = fmt.bits_stored
    out.HighBit = fmt.bits_stored - 1
    out.PixelRepresentation = fmt.pixel_representation
    out.LossyImageCompression = "01" if lossy else "00"
    out.PixelData = encapsulate(encoded)
    out["PixelData"].VR = "OB"
    out["PixelData"].is_undefined_length = True
    out.file_meta.TransferSyntaxUID = RLELossless
    return {
        "frames": frame_count(source),
        "source_transfer_syntax": str(UID(source.file_meta.TransferSyntaxUID)),
        "source_photometric": str(source.get("PhotometricInterpretation", "")),
        "output_photometric": fmt.photometric_interpretation,
        "keep_area": area.source,
        "kept_boxes": [list(b) for b in area.boxes],
        "blanked_pixels_per_frame": int((~mask).sum()),
        "lossy_history": lossy,
    }
