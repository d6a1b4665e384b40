"""localisation.py
===============

Pixel-level evaluation of the anomaly maps against lesion masks (``sonoshot eval`` when the
data folder has ``masks/<image stem>.png``, 0/255, one per abnormal image, the image's size).

- **pixel AUROC**: every pixel of every query image of a draw pooled (a normal image's pixels
  are all negatives), so a map must rank lesion pixels above the rest within an image *and*
  across images;
- **peak hit rate**: the fraction of abnormal query images whose map maximum lies inside the
  lesion mask.

Maps are compared on a grid whose longer side is :data:`EVAL_SIDE` pixels (a 512 x 512 BUSI
image: 4 x 4 blocks; a block is lesion when at least half its pixels are). The anomaly maps
have far coarser structure (a 10 x 10 or 14 x 14 patch grid), so this changes pixel AUROC by
less than 0.001 against the full grid (docs/model.md) at 1/16 of the cost. Two floors are
always reported beside a map: :func:`centre_map` (a fixed guess that lesions sit in the
middle of the image) and the raw nearest-normal patch distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from sonoshot.model.maps import unview

EVAL_SIDE = 128  # longer side of the grid pixel metrics are computed on


@dataclass(frozen=True)
class Mask:
    """A lesion mask on the evaluation grid and at full size."""

    full: np.ndarray  # (H, W) bool
    grid: np.ndarray  # (h, w) bool on the evaluation grid


def eval_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """The evaluation grid of an ``(H, W)`` image: the longer side :data:`EVAL_SIDE`."""
    h, w = shape
    scale = EVAL_SIDE / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def read_masks(folder: Path, files: Sequence[str]) -> dict[int, Mask]:
    """``masks/<stem>.png`` of each file that has one, by index into ``files``; empty when the
    folder has no ``masks`` folder. A mask counts where it is above 127."""
    masks: dict[int, Mask] = {}
    if not (folder / "masks").is_dir():
        return masks
    for i, name in enumerate(files):
        path = folder / "masks" / f"{Path(name).stem}.png"
        if path.is_file():
            with Image.open(path) as im:
                full = np.asarray(im.convert("L")) > 127
            h, w = eval_shape(full.shape)
            fraction = np.asarray(Image.fromarray(full.astype(np.float32)).resize(
                (w, h), Image.Resampling.BOX))
            masks[i] = Mask(full, fraction >= 0.5)
    return masks


def centre_map(shape: tuple[int, int]) -> np.ndarray:
    """The fixed centre-weighted floor: minus the squared distance to the image centre,
    normalised by the half-diagonal."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    return -(((yy + 0.5) / h - 0.5) ** 2 + ((xx + 0.5) / w - 0.5) ** 2).astype(np.float32)


def grid_maps(grids: np.ndarray, geometry: Sequence[tuple[float, bool]],
              shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Per-view patch maps ``(N, V, P)`` as maps on each image's evaluation grid."""
    cells = int(round(grids.shape[-1] ** 0.5))
    return [unview(g.reshape(len(geometry), cells, cells), geometry, eval_shape(shape))
            for g, shape in zip(grids, shapes)]


def pixel_metrics(maps: Sequence[np.ndarray], masks: Sequence[Mask | None]
                  ) -> tuple[float, float]:
    """Pooled pixel AUROC and peak hit rate of evaluation-grid maps; ``masks[i]`` is None for
    a normal image (every pixel negative).

    Raises
    ------
    ValueError
        If no image has a lesion pixel.
    """
    labels = [np.zeros(m.shape, bool) if k is None else k.grid for m, k in zip(maps, masks)]
    if not any(label.any() for label in labels):
        raise ValueError("no query image has a lesion pixel: pixel AUROC is undefined")
    auroc = roc_auc_score(np.concatenate([label.ravel() for label in labels]),
                          np.concatenate([m.ravel() for m in maps]))
    hits = []
    for m, k in zip(maps, masks):
        if k is None:
            continue
        r, c = np.unravel_index(int(np.argmax(m)), m.shape)
        rows, columns = k.full.shape
        hits.append(bool(k.full[int((r + 0.5) * rows / m.shape[0]),
                                int((c + 0.5) * columns / m.shape[1])]))
    return float(auroc), float(np.mean(hits)) if hits else float("nan")


def plot_gallery(images: Sequence[np.ndarray], masks: Sequence[Mask | None],
                 maps: dict[str, Sequence[np.ndarray]], title: str, out: Path) -> Path:
    """One row per image: the image with its lesion contour, then each named map (full size)
    with the same contour and its peak marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 1 + len(maps)
    fig, axes = plt.subplots(len(images), columns, figsize=(2.4 * columns, 2.4 * len(images)),
                             squeeze=False)
    for row, (image, mask) in enumerate(zip(images, masks)):
        panels = [("image" if mask is not None else "image (normal)", image, None)]
        panels += [(name, values[row], values[row]) for name, values in maps.items()]
        for col, (name, shown, values) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(shown, cmap="gray" if values is None else "inferno")
            if mask is not None:
                ax.contour(mask.full, levels=[0.5], colors="cyan", linewidths=0.8)
            if values is not None:
                r, c = np.unravel_index(int(np.argmax(values)), values.shape)
                ax.plot(c, r, marker="+", color="lime", markersize=10, mew=2)
            ax.set_title(name if row == 0 else "", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
