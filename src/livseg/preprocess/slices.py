"""Slice selection for 2-D training.

Both papers train on the slices that contain the structure plus a margin of slices above and
below (liver: 10, tumour: 5 in the DenseNet-FCN paper). (The tumour stage's in-plane liver box
is :func:`livseg.preprocess.bbox.inplane_bbox`.)
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
