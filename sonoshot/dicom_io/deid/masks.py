"""masks.py
========

Device masks: where a device without a usable Sequence of Ultrasound Regions burns its text.

Two sources, in order: the ``[[deid.pixel_masks]]`` of the configuration (boxes of image data to
keep), then the recipe kept by pydicom's ``deid`` package (``deid/data/deid.dicom``: the CTP
pixel anonymizer's per-device filters, about 117 of them), matched by that package's own
``has_burned_pixels``. A recipe filter lists boxes to blank (``coordinates``,
``ctpcoordinates``) or to keep again (``keepcoordinates``, ``ctpkeepcoordinates``), applied in
the order written onto a frame that starts fully kept, exactly as ``deid`` cleans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from sonoshot.config import PixelMask

from ..pixels import RegionError, UltrasoundRegion

Box = tuple[int, int, int, int]  # x0, y0, x1, y1, inclusive
Op = tuple[bool, Box]  # (keep, box): applied in order onto a frame that starts blanked


class MaskError(ValueError):
    """A configured pixel mask is invalid for the image it matches."""


@dataclass(frozen=True)
class DeviceMask:
    """A matched device mask: what it keeps and blanks, in order, and where it came from."""

    ops: tuple[Op, ...]
    source: str  # "pixel mask <n>" or "deid recipe: <filter label>"


def _config_matches(mask: PixelMask, ds: Dataset) -> bool:
    manufacturer = str(ds.get("Manufacturer", "")).lower()
    model = str(ds.get("ManufacturerModelName", "")).lower()
    return (
        bool(mask.manufacturer)
        and manufacturer.startswith(mask.manufacturer.lower())
        and model.startswith(mask.model.lower())
        and (mask.rows, mask.columns) == (int(ds.Rows), int(ds.Columns))
    )


def _config_mask(masks: Sequence[PixelMask], ds: Dataset) -> DeviceMask | None:
    rows, columns = int(ds.Rows), int(ds.Columns)
    for number, mask in enumerate(masks):
        if not _config_matches(mask, ds):
            continue
        try:
            boxes = [UltrasoundRegion(*box) for box in mask.keep]
        except (RegionError, TypeError) as exc:
            raise MaskError(f"pixel mask {number} is invalid: {exc}") from exc
        if not boxes or not all(b.fits(rows, columns) for b in boxes):
            raise MaskError(f"pixel mask {number} has no box or one outside the image")
        return DeviceMask(tuple((True, b.bounds) for b in boxes), f"pixel mask {number}")
    return None


def _recipe_box(text: str, rows: int, columns: int) -> Box | None:
    """A ``deid`` coordinate ``xmin,ymin,xmax,ymax`` (maximum exclusive, as ``deid`` slices) as an inclusive box."""
    if text.strip().lower() == "all":
        return (0, 0, columns - 1, rows - 1)
    x0, y0, x1, y1 = (int(float(v)) for v in text.split(","))
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, columns) - 1, min(y1, rows) - 1
    return (x0, y0, x1, y1) if x1 >= x0 and y1 >= y0 else None


def _recipe_mask(ds: Dataset) -> DeviceMask | None:
    from deid.config import DeidRecipe
    from deid.dicom.pixels.detect import has_burned_pixels

    rows, columns = int(ds.Rows), int(ds.Columns)
    result = has_burned_pixels(ds, deid=DeidRecipe("dicom"))  # a fresh recipe: deid edits its items
    ops: list[Op] = [(True, (0, 0, columns - 1, rows - 1))]
    labels = []
    for item in result.get("results", []):
        before = len(ops)
        for value, coordinates in item.get("coordinates") or []:
            for text in coordinates if isinstance(coordinates, list) else [coordinates]:
                box = _recipe_box(str(text), rows, columns) if "from:" not in str(text) else None
                if box is not None:
                    ops.append((int(value) == 1, box))
        if len(ops) > before:
            labels.append(str(item.get("group", "")))
    if len(ops) == 1:
        return None
    return DeviceMask(tuple(ops), f"deid recipe ({', '.join(labels)} filter)")


def device_mask(ds: Dataset, masks: Sequence[PixelMask]) -> DeviceMask | None:
    """The configured mask that matches ``ds``, else the ``deid`` recipe's, else None.

    Raises
    ------
    MaskError
        If the matching configured mask is invalid or does not fit the image.
    """
    return _config_mask(masks, ds) or _recipe_mask(ds)
