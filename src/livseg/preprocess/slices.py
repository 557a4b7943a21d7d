"""Slice selection and in-plane liver boxes for 2-D training and the cascade's crop.

Both papers train on the slices that contain the structure plus a margin of slices above and
below (liver: 10, tumour: 5 in the DenseNet-FCN paper). The tumour stage works on the in-plane
bounding box of the liver (+ a margin), resized to the model's working size.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

Foreground = Literal["liver", "tumour", "all"]


def foreground_mask(label: np.ndarray, foreground: Foreground) -> np.ndarray:
    """Boolean mask of a label array: "liver" = label >= 1, "tumour" = label == 2, "all" = True."""
    label = np.asarray(label)
    if foreground == "liver":
        return label >= 1
    if foreground == "tumour":
        return label == 2
    if foreground == "all":
        return np.ones(label.shape, dtype=bool)
    raise ValueError(f"foreground must be 'liver', 'tumour' or 'all', got {foreground!r}")


def select_slices(
    label: np.ndarray, margin: int = 0, foreground: Foreground = "liver"
) -> np.ndarray:
    """Axial slices holding the foreground, plus ``margin`` slices above and below.

    Args:
        label: (Z, H, W) label array (0 background, 1 liver, 2 tumour).
        margin: Slices added on each side of every foreground slice (>= 0), clipped to the volume.
        foreground: "liver" (label >= 1), "tumour" (label == 2) or "all" (every slice).

    Returns:
        Sorted, unique int64 slice indices (shape (N,)); empty when the volume has no foreground.
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"label must be (Z, H, W), got shape {label.shape}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    z = label.shape[0]
    if foreground == "all":
        return np.arange(z, dtype=np.int64)
    present = foreground_mask(label, foreground).reshape(z, -1).any(axis=1)
    if not present.any():
        return np.zeros(0, dtype=np.int64)
    if margin:
        # dilate the 1-D presence vector by `margin` with a running maximum via cumsum
        c = np.concatenate([[0], np.cumsum(present, dtype=np.int64)])
        lo = np.clip(np.arange(z) - margin, 0, z)
        hi = np.clip(np.arange(z) + margin + 1, 0, z)
        present = (c[hi] - c[lo]) > 0
    return np.flatnonzero(present).astype(np.int64)


def inplane_bbox(
    mask: np.ndarray,
    margin: int = 0,
    square: bool = False,
) -> tuple[int, int, int, int] | None:
    """In-plane bounding box of a mask over all slices, with a margin.

    Args:
        mask: (Z, H, W) or (H, W) boolean (or label, non-zero = inside) array.
        margin: Pixels added on every side, clipped to the image.
        square: Grow the shorter side (centred, shifted to stay inside the image) so that the
            box is square when the image allows; resizing a square box to a square working
            size keeps the aspect ratio.

    Returns:
        (y0, y1, x0, x1) with exclusive ends, in pixels; None when the mask is empty.
    """
    mask = np.asarray(mask) != 0
    if mask.ndim == 3:
        mask = mask.any(axis=0)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (Z, H, W) or (H, W), got shape {mask.shape}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    h, w = mask.shape
    y0, y1 = max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, h)
    x0, x1 = max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, w)
    if square:
        side = max(y1 - y0, x1 - x0)
        y0, y1 = _grow(y0, y1, min(side, h), h)
        x0, x1 = _grow(x0, x1, min(side, w), w)
    return y0, y1, x0, x1


def _grow(a: int, b: int, length: int, limit: int) -> tuple[int, int]:
    """Grow [a, b) to ``length`` around its centre, shifted to stay inside [0, limit)."""
    extra = length - (b - a)
    if extra <= 0:
        return a, b
    a -= extra // 2
    b = a + length
    if a < 0:
        a, b = 0, length
    if b > limit:
        a, b = limit - length, limit
    return a, b
