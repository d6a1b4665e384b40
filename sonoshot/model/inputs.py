"""inputs.py
=========

What the detector reads: DICOM instances (through :mod:`sonoshot.dicom_io.pixels`, the one
decode path; :func:`~sonoshot.dicom_io.pixels.iter_frames_fast`, which decodes JPEG Baseline
with libjpeg-turbo) and plain PNG/JPEG files, turned into RGB frames cropped to the ultrasound
image.

For DICOM: frames are sampled evenly from cine loops (``frames_per_cine``), and each frame is
cropped to the largest 2D tissue region of the Sequence of Ultrasound Regions (the largest
region of any kind when no region is flagged 2D tissue; the whole frame when there are none or
they are not trusted). The regions are those de-identification keeps:
:func:`~sonoshot.dicom_io.pixels.ultrasound_regions` clips a region that passes the image edge
by at most 2 pixels and trusts none when one passes it by more.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from sonoshot.dicom_io.pixels import frame_count, iter_frames_fast, ultrasound_regions

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class InputError(ValueError):
    """A file cannot be read as an ultrasound image, or a folder holds too few of them."""


@dataclass(frozen=True)
class InputImage:
    """The frames of one instance or image file, ready for a backbone."""

    name: str  # file name, or the SOP Instance UID for datasets
    sha256: str  # of the file bytes (empty for in-memory datasets)
    frame_indices: tuple[int, ...]
    frames: tuple[np.ndarray, ...]  # RGB (H, W, 3) or monochrome (H, W)
    origin: tuple[int, int] = (0, 0)  # (x, y) of the frames' top-left pixel in the instance
    grid: tuple[int, int] | None = None  # (Rows, Columns) of the instance; None: the frame's own

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(Rows, Columns)`` of the instance's pixel grid the frames were cropped from."""
        return self.grid if self.grid is not None else tuple(self.frames[0].shape[:2])


def even_indices(count: int, wanted: int) -> list[int]:
    """``wanted`` frame numbers spread evenly over ``count`` frames (all when fewer)."""
    if count <= wanted:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, wanted)})


def crop_box(ds: Dataset) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` inclusive box of the ultrasound image, or None for the whole frame."""
    regions = ultrasound_regions(ds)
    tissue = [r for r in regions if r.spatial_format == 1 and r.data_type in (0, 1)] or regions
    if not tissue:
        return None
    best = max(tissue, key=lambda r: (r.x1 - r.x0 + 1) * (r.y1 - r.y0 + 1))
    return best.bounds


def dataset_frames(ds: Dataset, frames_per_cine: int) -> InputImage:
    """Sampled, cropped frames of a DICOM instance.

    Raises
    ------
    sonoshot.dicom_io.pixels.UndecodableError
        If the pixel data cannot be decoded.
    """
    indices = even_indices(frame_count(ds), frames_per_cine)
    box = crop_box(ds)
    frames = []
    grid: tuple[int, int] | None = None
    for frame in iter_frames_fast(ds, indices):
        grid = (frame.shape[0], frame.shape[1])
        if box is not None:
            x0, y0, x1, y1 = box
            frame = frame[y0:y1 + 1, x0:x1 + 1]
        frames.append(frame)
    return InputImage(str(ds.get("SOPInstanceUID", "")), "", tuple(indices), tuple(frames),
                      (box[0], box[1]) if box is not None else (0, 0), grid)


def read_input(path: Path, frames_per_cine: int) -> InputImage:
    """Read a DICOM file or an image file (once: parsed and hashed from the same bytes).

    Raises
    ------
    InputError
        If the file is neither a readable image nor a decodable DICOM instance; the message
        names the file and the reason.
    """
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if path.suffix.lower() in IMAGE_SUFFIXES:
        try:
            with Image.open(io.BytesIO(data)) as im:
                frame = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{path}: not a readable image ({exc})") from exc
        return InputImage(path.name, digest, (0,), (frame,))
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        image = dataset_frames(ds, frames_per_cine)
    except (InvalidDicomError, ValueError, AttributeError, OSError) as exc:
        raise InputError(f"{path}: not a decodable DICOM image ({exc})") from exc
    return dataclasses.replace(image, name=path.name, sha256=digest)


def list_inputs(folder: Path) -> list[Path]:
    """Files in ``folder`` (recursively, sorted), skipping hidden files and ``manifest.csv``.

    Raises
    ------
    InputError
        If ``folder`` is not a directory.
    """
    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory")
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.name != "manifest.csv")
