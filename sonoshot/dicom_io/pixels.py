"""pixels.py
=========

The one decode path for pixel data, shared by de-identification and the detector.

Frames are decoded one at a time with pydicom's pixel decoders (pylibjpeg and its plugins for
JPEG, JPEG-LS, JPEG 2000 and RLE), so a long cine loop never has to fit in memory uncompressed.
Colour is normalised the same way for every transfer syntax:

* YBR_FULL, YBR_FULL_422, YBR_ICT and YBR_RCT are converted to RGB (PS3.3 C.7.6.3.1.2);
* PALETTE COLOR is expanded through its lookup tables to RGB (PS3.3 C.7.6.3.1.5): 8 bits
  when the tables hold 8-bit values (also when stored as ``v << 8`` or ``v * 257`` in 16-bit
  tables, which is reduced exactly), else 16 bits;
* planar configuration 1 (colour-by-plane) is returned interleaved, ``(rows, columns, 3)``;
* MONOCHROME1 and MONOCHROME2 are returned unchanged as ``(rows, columns)``: MONOCHROME1 is
  *not* inverted, so callers that display it must invert it themselves.

:func:`frame_format` says what :func:`iter_frames` yields before any frame is decoded.
:func:`iter_frames_fast` is the same for readers that need the picture rather than the exact
values (the detector): JPEG Baseline through Pillow's libjpeg-turbo.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import apply_color_lut, get_decoder
from pydicom.uid import UID, JPEGBaseline8Bit

__all__ = [
    "MAX_REGION_OVERSHOOT",
    "FrameFormat",
    "RegionError",
    "RegionGeometry",
    "UltrasoundRegion",
    "UndecodableError",
    "UnsupportedTransferSyntaxError",
    "frame_count",
    "frame_format",
    "iter_frames",
    "iter_frames_fast",
    "region_geometry",
    "ultrasound_regions",
]


class UndecodableError(ValueError):
    """The pixel data of an instance cannot be decoded (transfer syntax, plugin or content)."""


class UnsupportedTransferSyntaxError(UndecodableError):
    """No decoder (or no installed decoding plugin) exists for the transfer syntax."""


class RegionError(ValueError):
    """An ultrasound region has a negative coordinate or a maximum below its minimum."""


#: A region may pass the image edge by this many pixels and is clipped (vendors disagree on
#: whether Region Location Max is inclusive); any grosser mismatch means the regions do not
#: describe these pixels (a cropped or downscaled copy) and none of them is trusted.
MAX_REGION_OVERSHOOT = 2


_REGION_KEYWORDS = (
    "RegionLocationMinX0",
    "RegionLocationMinY0",
    "RegionLocationMaxX1",
    "RegionLocationMaxY1",
)


@dataclass(frozen=True)
class UltrasoundRegion:
    """One item of the Sequence of Ultrasound Regions (0018,6011), PS3.3 C.8.5.5.

    Bounds are inclusive pixel coordinates: the region covers columns ``x0..x1`` and rows
    ``y0..y1``.

    Raises
    ------
    RegionError
        If a coordinate is negative or a maximum is below its minimum.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    spatial_format: int = 0  # (0018,6012) Region Spatial Format: 1 2D, 2 M-mode, 3 spectral, ...
    data_type: int = 0  # (0018,6014) Region Data Type: 1 tissue, 2 colour flow, ...

    def __post_init__(self) -> None:
        if min(self.x0, self.y0, self.x1, self.y1) < 0:
            raise RegionError(f"ultrasound region {self.bounds} has a negative coordinate")
        if self.x1 < self.x0 or self.y1 < self.y0:
            raise RegionError(f"ultrasound region {self.bounds} has a maximum below its minimum")

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)``, inclusive."""
        return (self.x0, self.y0, self.x1, self.y1)

    def fits(self, rows: int, columns: int) -> bool:
        """Whether the region lies inside an image of ``rows`` × ``columns`` pixels."""
        return self.x1 < columns and self.y1 < rows


def _image_size(ds: Dataset) -> tuple[int, int]:
    try:
        return int(ds.Rows), int(ds.Columns)
    except AttributeError as exc:
        raise UndecodableError("(0028,0010) Rows and (0028,0011) Columns are required") from exc


@dataclass(frozen=True)
class RegionGeometry:
    """The Sequence of Ultrasound Regions as trusted for an image.

    ``regions`` are clipped to the image; they are empty when the sequence is absent or not
    trusted, and ``problem`` then says why (without any value other than coordinates).
    """

    regions: tuple[UltrasoundRegion, ...]
    clipped: tuple[int, ...] = ()  # indices of regions clipped to the image edge
    problem: str = ""  # why the sequence is not trusted; "" when trusted or absent


def region_geometry(ds: Dataset) -> RegionGeometry:
    """Read the Sequence of Ultrasound Regions and decide whether it describes these pixels.

    A region that passes the last column or row by at most :data:`MAX_REGION_OVERSHOOT`
    pixels is clipped. A region that lacks a coordinate, has inverted bounds, or passes the
    image by more makes the whole sequence untrusted: the file is treated as having none.

    Raises
    ------
    UndecodableError
        If (0028,0010) Rows or (0028,0011) Columns is missing.
    """
    rows, columns = _image_size(ds)
    regions, clipped = [], []
    for index, item in enumerate(ds.get("SequenceOfUltrasoundRegions") or []):
        missing = [k for k in _REGION_KEYWORDS if item.get(k) is None]
        if missing:
            return RegionGeometry((), (), f"ultrasound region {index} lacks {', '.join(missing)}")
        try:
            region = UltrasoundRegion(
                *(int(item[k].value) for k in _REGION_KEYWORDS),
                spatial_format=int(item.get("RegionSpatialFormat") or 0),
                data_type=int(item.get("RegionDataType") or 0),
            )
        except RegionError as exc:
            return RegionGeometry((), (), str(exc))
        overshoot = max(region.x1 - (columns - 1), region.y1 - (rows - 1), 0)
        if overshoot > MAX_REGION_OVERSHOOT or region.x0 >= columns or region.y0 >= rows:
            return RegionGeometry((), (), (
                f"ultrasound region {index} {region.bounds} does not fit the {columns}×{rows} image "
                f"(columns 0..{columns - 1}, rows 0..{rows - 1}): the regions do not describe these pixels"
            ))
        if overshoot:
            clipped.append(index)
            region = replace(region, x1=min(region.x1, columns - 1), y1=min(region.y1, rows - 1))
        regions.append(region)
    return RegionGeometry(tuple(regions), tuple(clipped))


def ultrasound_regions(ds: Dataset) -> list[UltrasoundRegion]:
    """The trusted regions of :func:`region_geometry`, clipped to the image (empty if none).

    Raises
    ------
    UndecodableError
        If (0028,0010) Rows or (0028,0011) Columns is missing.
    """
    return list(region_geometry(ds).regions)


def frame_count(ds: Dataset) -> int:
    """The number of frames, (0028,0008) Number of Frames, or 1 when it is absent or empty."""
    value = ds.get("NumberOfFrames")
    return int(value) if value else 1


@dataclass(frozen=True)
class FrameFormat:
    """What :func:`iter_frames` yields for an instance."""

    rows: int
    columns: int
    samples_per_pixel: int  # 3 for RGB output, 1 for monochrome
    bits_allocated: int  # 8 or 16
    bits_stored: int
    pixel_representation: int  # 0 unsigned, 1 signed
    photometric_interpretation: str  # "RGB", "MONOCHROME1" or "MONOCHROME2"

    @property
    def dtype(self) -> np.dtype:
        kind = "i" if self.pixel_representation else "u"
        return np.dtype(f"{kind}{self.bits_allocated // 8}")

    @property
    def shape(self) -> tuple[int, ...]:
        if self.samples_per_pixel == 1:
            return (self.rows, self.columns)
        return (self.rows, self.columns, self.samples_per_pixel)


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:
        raise UndecodableError("(0002,0010) Transfer Syntax UID is missing")
    return UID(uid)


# Transfer syntaxes newer than pydicom's dictionary (PS3.6 Table A-1, 2024b).
_NEWER_NAMES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}


def _ts_label(uid: UID) -> str:
    name = _NEWER_NAMES.get(str(uid), uid.name)
    return f"{uid} ({name})" if name != uid else f"{uid} (unknown transfer syntax)"


def _palette_scale(ds: Dataset) -> tuple[int, int]:
    """``(bits, divisor)`` of the RGB output of a palette: divide the table output by divisor.

    8-bit tables give ``(8, 1)``; 16-bit tables give ``(16, 1)``, or ``(8, 256)`` / ``(8, 257)``
    when that reduces them to 8 bits exactly.
    Many devices store 8-bit palettes in 16-bit tables (``v << 8`` or ``v * 257``); dividing
    those back is lossless, so such palettes yield uint8 like every other 8-bit image.
    """
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    if descriptor is None:
        raise UndecodableError("PALETTE COLOR without (0028,1101) Red Palette Color LUT Descriptor")
    entries = int(descriptor[0]) or 65536
    first = int(descriptor[1])
    indices = np.arange(first, first + entries).astype("u2" if ds.BitsAllocated == 16 else "u1")
    try:
        table = apply_color_lut(indices, ds)
    except Exception as exc:  # malformed tables raise ValueError, IndexError or KeyError
        raise UndecodableError(f"PALETTE COLOR lookup tables cannot be applied ({exc})") from exc
    if table.dtype == np.uint8:
        return 8, 1
    for divisor in (256, 257):
        if not np.any(table % divisor):
            return 8, divisor
    return 16, 1


def frame_format(ds: Dataset) -> FrameFormat:
    """Describe the arrays :func:`iter_frames` will yield, without decoding anything.

    Raises
    ------
    UndecodableError
        If the transfer syntax has no decoder or the image pixel attributes are missing.
    """
    _decoder(ds)
    rows, columns = _image_size(ds)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    samples = int(ds.get("SamplesPerPixel", 1))
    bits_allocated = int(ds.get("BitsAllocated", 8))
    bits_stored = int(ds.get("BitsStored", bits_allocated))
    signed = int(ds.get("PixelRepresentation", 0))
    if photometric == "PALETTE COLOR":
        bits, _divisor = _palette_scale(ds)
        return FrameFormat(rows, columns, 3, bits, bits, 0, "RGB")
    if samples == 3:
        return FrameFormat(rows, columns, 3, bits_allocated, bits_stored, signed, "RGB")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UndecodableError(f"unsupported (0028,0004) Photometric Interpretation {photometric!r}")
    return FrameFormat(rows, columns, 1, bits_allocated, bits_stored, signed, photometric)


def _decoder(ds: Dataset):  # noqa: ANN202 - pydicom's Decoder is not part of its public typing
    uid = _transfer_syntax(ds)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise UndecodableError(f"no pixel data to decode (transfer syntax {_ts_label(uid)})")
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise UnsupportedTransferSyntaxError(f"transfer syntax {_ts_label(uid)} cannot be decoded") from exc
    if not decoder.is_available:
        raise UnsupportedTransferSyntaxError(
            f"transfer syntax {_ts_label(uid)}: no decoding plugin is installed "
            f"({', '.join(decoder.missing_dependencies) or 'unknown'})"
        )
    return decoder


def iter_frames(ds: Dataset, indices: Sequence[int] | None = None) -> Iterator[np.ndarray]:
    """Decode frames one at a time, in the colour model described in the module docstring.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        An image instance with its file meta (for the transfer syntax).
    indices : sequence of int, optional
        Zero-based frame numbers to decode, in the order given; all frames when omitted.

    Yields
    ------
    numpy.ndarray
        ``(rows, columns, 3)`` RGB or ``(rows, columns)`` monochrome, in the dtype given by
        :func:`frame_format`. Each array is a fresh, writeable copy.

    Raises
    ------
    UndecodableError
        If the transfer syntax cannot be decoded, an index is out of range, or the pixel data
        is corrupt. The message names the transfer syntax.
    """
    fmt = frame_format(ds)
    decoder = _decoder(ds)
    count = frame_count(ds)
    wanted = list(range(count)) if indices is None else [int(i) for i in indices]
    bad = [i for i in wanted if not 0 <= i < count]
    if bad:
        raise UndecodableError(f"frame indices {bad} are outside 0..{count - 1}")
    palette = str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR"
    _bits, divisor = _palette_scale(ds) if palette else (0, 1)
    uid = _transfer_syntax(ds)
    try:
        for index in wanted:  # one call per frame: pydicom rejects repeated indices
            ((array, _meta),) = decoder.iter_array(ds, indices=[index], as_rgb=True)
            if palette:
                array = apply_color_lut(array, ds)
                if divisor != 1:
                    array = array // divisor
            frame = np.array(array, dtype=fmt.dtype, copy=True)
            if frame.shape != fmt.shape:
                raise UndecodableError(
                    f"decoded frame has shape {frame.shape}, expected {fmt.shape} "
                    f"(transfer syntax {_ts_label(uid)})"
                )
            yield frame
    except UndecodableError:
        raise
    except Exception as exc:  # the decoders raise many types for corrupt data
        raise UndecodableError(
            f"transfer syntax {_ts_label(uid)}: pixel data could not be decoded ({exc})"
        ) from exc


_PILLOW_PHOTOMETRIC = ("YBR_FULL", "YBR_FULL_422", "RGB", "MONOCHROME1", "MONOCHROME2")


def _pillow_jpeg_frame(data: bytes, fmt: FrameFormat, photometric: str) -> np.ndarray | None:
    """One JPEG Baseline frame decoded by Pillow (libjpeg-turbo), or None where this path does
    not apply (an Adobe colour-transform marker: left to pydicom's handling)."""
    from PIL import Image

    with Image.open(BytesIO(data), formats=("JPEG",)) as image:
        if "adobe_transform" in image.info:
            return None
        if fmt.samples_per_pixel == 3:
            if photometric.startswith("YBR_FULL") and "jfif" in image.info and image.mode == "RGB":
                return np.array(image, dtype=np.uint8)  # JFIF is YCbCr: libjpeg-turbo converts
            image.draft("YCbCr", image.size)  # what the codestream holds, no guessing
            if image.mode != "YCbCr":
                return None
            if photometric.startswith("YBR_FULL"):
                image = image.convert("RGB")
        elif image.mode != "L":
            return None
        return np.array(image, dtype=np.uint8)


def iter_frames_fast(ds: Dataset, indices: Sequence[int] | None = None) -> Iterator[np.ndarray]:
    """:func:`iter_frames` for readers that need the picture, not the exact bytes (the
    detector): JPEG Baseline 8-bit frames (YBR_FULL, YBR_FULL_422, RGB, MONOCHROME1/2) are
    decoded by Pillow's libjpeg-turbo, colour conversion included (about 10x faster on large
    ultrasound frames); its chroma upsampling and integer colour conversion differ from
    pydicom's by a few levels at colour edges (mean absolute difference about 0.03). Every
    other instance goes through :func:`iter_frames` unchanged. Same shapes, dtype and
    colour model.

    Raises
    ------
    UndecodableError
        As :func:`iter_frames`.
    """
    fmt = frame_format(ds)
    uid = _transfer_syntax(ds)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if uid != JPEGBaseline8Bit or fmt.bits_allocated != 8 or photometric not in _PILLOW_PHOTOMETRIC:
        yield from iter_frames(ds, indices)
        return
    count = frame_count(ds)
    wanted = list(range(count)) if indices is None else [int(i) for i in indices]
    bad = [i for i in wanted if not 0 <= i < count]
    if bad:
        raise UndecodableError(f"frame indices {bad} are outside 0..{count - 1}")
    for index in wanted:
        try:
            data = get_frame(ds.PixelData, index, number_of_frames=count)
            frame = _pillow_jpeg_frame(data, fmt, photometric)
        except Exception as exc:  # Pillow and the fragment parser raise many types for corrupt data
            raise UndecodableError(
                f"transfer syntax {_ts_label(uid)}: pixel data could not be decoded ({exc})"
            ) from exc
        if frame is None:
            yield from iter_frames(ds, [index])
            continue
        if frame.shape != fmt.shape:
            raise UndecodableError(
                f"decoded frame has shape {frame.shape}, expected {fmt.shape} "
                f"(transfer syntax {_ts_label(uid)})"
            )
        yield frame
