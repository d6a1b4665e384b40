"""pixels_clean.py
===============

Clean Pixel Data (PS3.15 E.3.1) for ultrasound. The keep area is chosen, in order, from

1. the Sequence of Ultrasound Regions (``regions``; ``clipped regions`` when a region passed the
   image edge by at most 2 pixels), unless they do not describe these pixels
   (:func:`sonoshot.dicom_io.pixels.region_geometry`);
2. a device mask (``device mask``: configured, else pydicom ``deid``'s recipe, :mod:`.masks`);
3. the whole frame (``text-only``).

Then, in every method, burned-in text inside the kept area is found by the text detector
(:mod:`.textdetect`) on several frames, and the union of the boxes, grown, is blanked on every
frame. Frames are decoded one at a time through :mod:`sonoshot.dicom_io.pixels` and written RLE
Lossless, so memory holds one decoded frame plus the compressed output. The output's
Photometric Interpretation is what was written (RGB after YBR or PALETTE COLOR decoding), and
Lossy Image Compression stays "01" when the source was ever lossy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_encoder
from pydicom.uid import UID, RLELossless
from scipy import ndimage

from sonoshot.config import PixelMask

from ..pixels import frame_count, frame_format, iter_frames, region_geometry
from .masks import Box, MaskError, Op, device_mask
from .textdetect import CLEAN_SCORE, TextDetector, grow

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

#: The keep-area methods, as the report and ``sonoshot anonymize`` name them.
METHODS = ("regions", "clipped regions", "device mask", "text-only", "none (cleaning off)")
TEXT_MARGIN = 2  # pixels added around every grown text box
TEXT_ROUNDS = 6  # most detection passes per frame: the original, then as blanked so far


class PixelCleaningError(ValueError):
    """No usable keep area: a matching configured mask is invalid, or nothing would be kept."""


@dataclass(frozen=True)
class KeepArea:
    """What is kept on every frame: ``ops`` applied in order onto a blank frame, then text blanked.

    ``method`` is one of :data:`METHODS`; ``source`` and ``notes`` say why (no PHI).
    """

    method: str
    source: str
    ops: tuple[Op, ...]
    notes: tuple[str, ...] = ()
    text_boxes: tuple[Box, ...] = ()  # grown text boxes blanked inside the kept area

    def mask(self, rows: int, columns: int, with_text: bool = True) -> np.ndarray:
        """Boolean ``(rows, columns)`` array, True where pixels are kept."""
        mask = np.zeros((rows, columns), dtype=bool)
        for keep, (x0, y0, x1, y1) in self.ops + tuple((False, b) for b in (self.text_boxes if with_text else ())):
            mask[y0:y1 + 1, x0:x1 + 1] = keep
        return mask


def keep_area(ds: Dataset, clean: bool, masks: Sequence[PixelMask]) -> KeepArea:
    """Choose the keep area from the header alone: regions, else a device mask, else the whole frame.

    Raises
    ------
    PixelCleaningError
        If a matching configured mask is invalid or has a box outside the image.
    sonoshot.dicom_io.pixels.UndecodableError
        If Rows or Columns is missing.
    """
    geometry = region_geometry(ds)
    rows, columns = int(ds.Rows), int(ds.Columns)
    whole = (0, 0, columns - 1, rows - 1)
    if not clean:
        return KeepArea("none (cleaning off)", "whole image (cleaning off)", ((True, whole),))
    notes = (f"regions not trusted: {geometry.problem}",) if geometry.problem else ()
    if geometry.regions:
        ops = tuple((True, r.bounds) for r in geometry.regions)
        if geometry.clipped:
            clipped = ", ".join(str(i) for i in geometry.clipped)
            return KeepArea("clipped regions", "Sequence of Ultrasound Regions", ops,
                            (f"region(s) {clipped} clipped to the {columns}×{rows} image",))
        return KeepArea("regions", "Sequence of Ultrasound Regions", ops)
    try:
        matched = device_mask(ds, masks)
    except MaskError as exc:
        raise PixelCleaningError(str(exc)) from exc
    if matched is not None:
        return KeepArea("device mask", matched.source, matched.ops, notes)
    reason = "regions not trusted" if geometry.problem else "no Sequence of Ultrasound Regions"
    return KeepArea("text-only", f"whole frame ({reason}, no device mask)", ((True, whole),), notes)


def find_text(ds: Dataset, area: KeepArea, indices: Sequence[int], detector: TextDetector) -> KeepArea:
    """``area`` with the text found on frames ``indices`` inside its kept part blanked.

    Each frame is searched whole first (the detector needs the context; the first frame in both
    views, the others, which repeat a static overlay, in the plain view), then again as it will
    be written (outside the keep area and the boxes found so far black, plain view), until a
    pass finds nothing new (at most :data:`TEXT_ROUNDS` passes): blanking changes the context,
    and marks next to removed text (labels, body markers) only score as text once it is gone.
    The boxes of all frames are united, grown (:func:`.textdetect.grow` plus
    :data:`TEXT_MARGIN`), and every connected group of grown boxes that touches the kept area
    becomes one blanked rectangle.

    Raises
    ------
    PixelCleaningError
        If the text covers everything that would be kept.
    sonoshot.dicom_io.pixels.UndecodableError
        If a frame cannot be decoded.
    """
    rows, columns = int(ds.Rows), int(ds.Columns)
    kept = area.mask(rows, columns, with_text=False)
    found = np.zeros((rows, columns), dtype=bool)
    for number, frame in enumerate(iter_frames(ds, indices)):
        view = frame
        for round_ in range(TEXT_ROUNDS):
            new = 0
            for box in detector.detect(view, CLEAN_SCORE, views=2 if round_ == number == 0 else 1):
                x0, y0, x1, y1 = grow(box, rows, columns, TEXT_MARGIN)
                new += not found[y0:y1 + 1, x0:x1 + 1].all()
                found[y0:y1 + 1, x0:x1 + 1] = True
            if not new:
                break
            view = frame.copy()
            view[found | ~kept] = 0
    labels, _count = ndimage.label(found)
    boxes = []
    for number, (ys, xs) in enumerate(ndimage.find_objects(labels), start=1):
        if kept[ys, xs][labels[ys, xs] == number].any():
            boxes.append((xs.start, ys.start, xs.stop - 1, ys.stop - 1))
    result = replace(area, text_boxes=tuple(boxes))
    if not result.mask(rows, columns).any():
        raise PixelCleaningError("text covers the whole kept area: nothing would be kept")
    return result


def black(photometric: str, bits_stored: int) -> int:
    """The fill value that displays as black (the maximum for MONOCHROME1)."""
    return (1 << bits_stored) - 1 if photometric == "MONOCHROME1" else 0


def was_lossy(ds: Dataset) -> bool:
    """Whether the source's pixel data has ever been lossy compressed."""
    return str(ds.get("LossyImageCompression", "")) == "01" or str(ds.file_meta.TransferSyntaxUID) in _LOSSY


class FrameWatcher(Protocol):
    """Sees each frame :func:`write_clean_pixels` writes, as decoded and as cleaned (the verifier's
    :class:`.verify.PixelWitness`); neither call may modify the frame."""

    sample: Sequence[int]  # frames to clean before the others

    def decoded(self, index: int, frame: np.ndarray) -> None: ...

    def cleaned(self, index: int, frame: np.ndarray) -> None: ...


def write_clean_pixels(source: Dataset, out: Dataset, area: KeepArea,
                       watcher: FrameWatcher | None = None) -> dict[str, object]:
    """Decode ``source`` frame by frame, blank outside ``area``, store RLE Lossless in ``out``.

    ``out`` gets the pixel data, the image pixel attributes that describe it, the RLE Lossless
    transfer syntax and the lossy compression history; the SOP Instance UID is not touched.
    ``watcher`` sees every frame before and after it is blanked; its ``sample`` frames are
    cleaned first.

    Raises
    ------
    sonoshot.dicom_io.pixels.UndecodableError
        If the source pixel data cannot be decoded.
    """
    fmt = frame_format(source)
    mask = area.mask(fmt.rows, fmt.columns)
    fill = black(fmt.photometric_interpretation, fmt.bits_stored)
    encoder = get_encoder(RLELossless)
    options = dict(
        rows=fmt.rows, columns=fmt.columns, samples_per_pixel=fmt.samples_per_pixel,
        bits_allocated=fmt.bits_allocated, bits_stored=fmt.bits_stored,
        pixel_representation=fmt.pixel_representation,
        photometric_interpretation=fmt.photometric_interpretation, number_of_frames=1,
        planar_configuration=0,
    )
    count = frame_count(source)
    first = [i for i in dict.fromkeys(watcher.sample if watcher else ()) if 0 <= i < count]
    order = first + sorted(set(range(count)) - set(first))
    encoded: list[bytes] = [b""] * count
    for index, frame in zip(order, iter_frames(source, order), strict=True):
        if watcher is not None:
            watcher.decoded(index, frame)
        frame[~mask] = fill
        encoded[index] = encoder.encode(frame, **options)
        if watcher is not None:
            watcher.cleaned(index, frame)
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
        "method": area.method,
        "keep_area": area.source,
        "keep_notes": list(area.notes),
        "mask_ops": [["keep" if keep else "blank", list(box)] for keep, box in area.ops],
        "text_boxes": [list(b) for b in area.text_boxes],
        "blanked_pixels_per_frame": int((~mask).sum()),
        "lossy_history": lossy,
    }
