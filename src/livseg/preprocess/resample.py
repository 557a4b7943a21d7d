"""In-plane resizing of slice stacks: bilinear (anti-aliased) for images, nearest for labels.

Only the last two axes (H, W) are resized; slices are never mixed. Pixel centres are aligned
(``align_corners=False`` convention): output pixel ``i`` samples input position
``(i + 0.5) * in / out - 0.5``. Labels are **never interpolated**: nearest neighbour picks an
existing label value for every output pixel.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

#: Slices resized per torch call (bounds the temporary memory for large volumes).
_CHUNK = 32


def _size2(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return h, w


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source indices of nearest-neighbour resizing from ``n_in`` to ``n_out`` samples.

    Output sample ``i`` takes input ``floor((i + 0.5) * n_in / n_out)`` (centre-aligned, like
    torch's ``nearest-exact``); int64 array of shape (n_out,).
    """
    idx = np.floor((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.clip(idx, 0, n_in - 1)


def resize_slices(
    array: np.ndarray,
    size: int | tuple[int, int],
    kind: Literal["image", "label"] = "image",
) -> np.ndarray:
    """Resize every slice of a stack in-plane.

    Args:
        array: (Z, H, W) or (Z, C, H, W) (any array whose last two axes are (H, W) works).
        size: Output (H', W'), or one int for a square output.
        kind: "image": bilinear, anti-aliased when down-sampling (torch ``interpolate`` with
            ``antialias=True``), float32 output. "label": nearest neighbour, the input dtype
            kept and no new values created.

    Returns:
        Array of shape (..., H', W'). Returns a copy even when the size is unchanged.
    """
    arr = np.asarray(array)
    if arr.ndim < 2:
        raise ValueError(f"array must have at least 2 axes (..., H, W), got shape {arr.shape}")
    out_h, out_w = _size2(size)
    in_h, in_w = arr.shape[-2:]
    if in_h == 0 or in_w == 0:
        raise ValueError(f"cannot resize slices of size {(in_h, in_w)}")
    if kind == "label":
        if (in_h, in_w) == (out_h, out_w):
            return arr.copy()
        rows = nearest_indices(in_h, out_h)
        cols = nearest_indices(in_w, out_w)
        return np.ascontiguousarray(arr[..., rows[:, None], cols[None, :]])
    if kind != "image":
        raise ValueError(f"kind must be 'image' or 'label', got {kind!r}")
    arr = arr.astype(np.float32, copy=False)
    if (in_h, in_w) == (out_h, out_w):
        return arr.copy()
    import torch
    import torch.nn.functional as F

    lead = arr.shape[:-2]
    flat = arr.reshape(-1, 1, in_h, in_w)
    out = np.empty((flat.shape[0], 1, out_h, out_w), dtype=np.float32)
    antialias = out_h < in_h or out_w < in_w
    with torch.no_grad():
        for start in range(0, flat.shape[0], _CHUNK):
            t = torch.from_numpy(np.ascontiguousarray(flat[start : start + _CHUNK]))
            r = F.interpolate(
                t, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=antialias
            )
            out[start : start + _CHUNK] = r.numpy()
    return out.reshape(*lead, out_h, out_w)
