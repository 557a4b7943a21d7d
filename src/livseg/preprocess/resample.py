"""In-plane resizing of slice stacks: bilinear (anti-aliased) for images, nearest for labels.

Only the last two axes (H, W) are resized; slices are never mixed. Pixel centres are aligned
(``align_corners=False`` convention): output pixel ``i`` samples input position
``(i + 0.5) * in / out - 0.5``. Labels are **never interpolated**: nearest neighbour picks an
existing label value for every output pixel.
"""

from __future__ import annotations

import functools
import logging
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

#: Slices resized per step (bounds the temporary memory for large volumes).
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
            ``antialias=True``, computed in numpy with :func:`linear_weights`), float32 output.
            "label": nearest neighbour, the input dtype kept and no new values created.

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
    lead = arr.shape[:-2]
    flat = arr.reshape(-1, in_h, in_w)
    antialias = out_h < in_h or out_w < in_w
    rows = linear_weights(in_h, out_h, antialias)
    cols = linear_weights(in_w, out_w, antialias)
    out = np.empty((flat.shape[0], out_h, out_w), dtype=np.float32)
    for start in range(0, flat.shape[0], _CHUNK):
        part = apply_weights(flat[start : start + _CHUNK], cols, axis=2)
        out[start : start + _CHUNK] = apply_weights(part, rows, axis=1)
    return out.reshape(*lead, out_h, out_w)


def apply_weights(x: np.ndarray, weights: tuple[np.ndarray, np.ndarray], axis: int) -> np.ndarray:
    """Resize ``x`` along ``axis`` with (first index, weights) from :func:`linear_weights`:
    output ``i`` = sum over k of ``w[i, k] * x[first[i] + k]``, in float32."""
    first, w = weights
    shape = [1] * x.ndim
    shape[axis] = -1
    acc = np.zeros(x.shape[:axis] + (first.size,) + x.shape[axis + 1 :], dtype=np.float32)
    for k in range(w.shape[1]):
        idx = np.minimum(first + k, x.shape[axis] - 1)
        acc += np.take(x, idx, axis=axis) * w[:, k].reshape(shape)
    return acc


@functools.lru_cache(maxsize=64)
def linear_weights(n_in: int, n_out: int, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """1-D linear resizing from ``n_in`` to ``n_out`` samples, with torch's weights.

    torch's ``interpolate(mode="bilinear", align_corners=False)`` is separable. Along one axis,
    with ``scale = n_in / n_out`` in float32:

    * ``antialias`` (torch's ``_compute_indices_min_size_weights_aa``): output ``i`` is centred
      at ``c = scale * (i + 0.5)`` (in pixel edges); input ``j`` within ``support`` of it (the
      scale when down-sampling, else 1) weighs ``1 - |j - c + 0.5| / max(scale, 1)``, and the
      weights are normalised to sum 1;
    * otherwise (``compute_indices_weights_linear``): output ``i`` samples
      ``src = scale * (i + 0.5) - 0.5`` (clamped at 0) between its two neighbours.

    The same float32/float64 steps as torch give the same weights, bit for bit (tested); only
    the order of the float32 sums may differ (about 1e-7 relative).

    Returns:
        (first (n_out,) int64, weights (n_out, K) float32): output ``i`` is the sum of
        ``weights[i, k] * x[first[i] + k]`` (zero weights pad the shorter rows). Read-only,
        cached.
    """
    f32 = np.float32
    scale = f32(n_in) / f32(n_out)
    i = np.arange(n_out, dtype=np.float64) + 0.5
    if antialias:
        support = np.float64(scale) if scale >= 1 else 1.0
        inv = np.float64(f32(1.0 / np.float64(scale))) if scale >= 1 else 1.0
        centre = (np.float64(scale) * i).astype(f32)
        first = np.maximum((centre - support + 0.5).astype(np.int64), 0)
        stop = np.minimum((centre + support + 0.5).astype(np.int64), n_in)
        k = np.arange(int((stop - first).max()))
        j = first[:, None] + k[None, :]
        x = ((j.astype(f32) - centre[:, None]).astype(np.float64) + 0.5) * inv
        w = np.maximum(f32(1) - np.abs(x.astype(f32)), f32(0))
        w[j >= stop[:, None]] = 0
        total = np.zeros(n_out, dtype=f32)
        for col in range(w.shape[1]):  # torch's running float32 sum
            total += w[:, col]
        w = np.where(total[:, None] != 0, w / np.where(total == 0, 1, total)[:, None], w)
    else:
        src = np.maximum((np.float64(scale) * i - 0.5).astype(f32), f32(0))
        first = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        lam = np.clip(src - first.astype(f32), 0, 1).astype(f32)
        w = np.stack([f32(1) - lam, lam], axis=1)  # at the last input both weigh it (clipped)
    w = w.astype(f32)
    first.flags.writeable = w.flags.writeable = False
    return first, w
