"""The coarse 3-D liver stage's pre-processing: the whole CT on a coarse grid, and back.

The coarse stage (:mod:`livseg.infer.coarse`) looks at the whole CT resampled to about 4 mm to
*place* the liver; the fine 2-D models then run only inside the region it finds. This module is
the one definition of that resampling, used by the training cache (:mod:`livseg.data.volumes`)
and by inference, so the two cannot drift apart.

Grid: a canonical (Z, Y, X) volume with spacing ``(sz, sy, sx)`` mm becomes a (D, H, W) grid with
``n_out = max(1, round(n * s / target_mm))`` samples per axis. Coarse voxel ``i`` covers the input
index range ``[i * n / n_out, (i + 1) * n / n_out)`` (pixel centres aligned, torch's
``align_corners=False``), so its spacing is ``s * n / n_out`` (close to, not exactly,
``target_mm``). Down-sampling averages the covered voxels (``area``: no aliasing); an axis that is
up-sampled (e.g. 5 mm slices to 4 mm) is interpolated linearly.

Intensities: HU clipped to ``window`` and scaled to [0, 1]; non-finite voxels count as air (0).
Masks are resampled the same way as fractions and thresholded at 0.5, so a coarse voxel is liver
when at least half of the tissue it covers is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from livseg.preprocess.resample import apply_weights, linear_weights

logger = logging.getLogger(__name__)

COARSE_WINDOW: tuple[float, float] = (-250.0, 350.0)
"""Default HU window of the coarse stage: soft tissue with the lungs and bone saturated."""

_CHUNK = 32
"""Input slices converted to float per step (bounds the temporary memory)."""


def coarse_shape(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], target_mm: float
) -> tuple[int, int, int]:
    """The coarse grid's (D, H, W) for a (Z, Y, X) volume.

    Args:
        shape: Input (Z, Y, X) in voxels.
        spacing: Input (sz, sy, sx) in mm.
        target_mm: Wanted coarse spacing in mm (> 0).

    Returns:
        ``max(1, round(n * s / target_mm))`` per axis.
    """
    if target_mm <= 0:
        raise ValueError(f"target_mm must be > 0, got {target_mm}")
    return tuple(max(1, int(round(n * s / target_mm))) for n, s in zip(shape, spacing, strict=True))


def coarse_spacing(
    shape: tuple[int, int, int], out_shape: tuple[int, int, int], spacing: tuple[float, ...]
) -> tuple[float, float, float]:
    """Spacing (mm) of the coarse grid: ``s * n / n_out`` per axis."""
    return tuple(float(s) * n / m for s, n, m in zip(spacing, shape, out_shape, strict=True))


def resample_grid(
    array: np.ndarray,
    out_shape: tuple[int, int, int],
    to_float: Callable[[np.ndarray], Any],
    apply: Callable[[Any, tuple[np.ndarray, np.ndarray], int], Any] = apply_weights,
    empty: Callable[[tuple[int, int, int]], Any] = lambda shape: np.empty(shape, np.float32),
) -> Any:
    """Resample (Z, Y, X) to ``out_shape``: in-plane first, chunk by chunk, then along z. An axis
    that shrinks is averaged over each output's input range (torch's ``area`` mode, adaptive
    average pooling), one that grows is interpolated linearly (``align_corners=False``).

    ``to_float`` turns a chunk of slices into float32 (numpy, or a torch tensor on a device with
    ``apply`` and ``empty`` from :mod:`livseg.preprocess.device`)."""
    d, h, w = out_shape
    z = array.shape[0]
    planes = empty((z, h, w))
    for start in range(0, z, _CHUNK):
        block = to_float(np.asarray(array[start : start + _CHUNK]))
        area = block.shape[1] >= h and block.shape[2] >= w
        block = apply(block, _axis_weights(block.shape[2], w, area), 2)
        planes[start : start + block.shape[0]] = apply(
            block, _axis_weights(block.shape[1], h, area), 1
        )
    if d == z:
        return planes
    return apply(planes, _axis_weights(z, d, z >= d), 0)


def _axis_weights(n: int, m: int, area: bool) -> tuple[np.ndarray, np.ndarray]:
    """(first, weights) of one axis from ``n`` to ``m`` samples: the mean of each output's input
    range ``[floor(i n / m), ceil((i + 1) n / m))`` when ``area``, else linear interpolation."""
    if not area:
        return linear_weights(n, m, antialias=False)
    i = np.arange(m, dtype=np.int64)
    first = (i * n) // m
    count = ((i + 1) * n + m - 1) // m - first
    k = np.arange(int(count.max()))
    weights = np.where(k[None, :] < count[:, None], 1.0 / count[:, None], 0.0).astype(np.float32)
    return first, weights


def window_unit(hu: np.ndarray, window: tuple[float, float] = COARSE_WINDOW) -> np.ndarray:
    """HU -> [0, 1] float32 through ``window``; NaN/inf count as air (0)."""
    lo, hi = np.float32(window[0]), np.float32(window[1])
    out = np.fmax(hu.astype(np.float32, copy=False), lo)  # NaN and -inf -> lo (fmax skips NaN)
    np.fmin(out, hi, out=out)  # inf -> hi
    out -= lo
    out *= 1.0 / (hi - lo)
    return out


def coarse_image(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    target_mm: float,
    window: tuple[float, float] = COARSE_WINDOW,
) -> np.ndarray:
    """A canonical CT on the coarse grid, windowed to [0, 1].

    Args:
        hu: (Z, Y, X) HU (any float or integer dtype; a view is fine, never copied whole).
        spacing: (sz, sy, sx) mm.
        target_mm: Coarse spacing in mm.
        window: HU window mapped to [0, 1].

    Returns:
        float32 (D, H, W) in [0, 1].
    """
    out_shape = coarse_shape(hu.shape, spacing, target_mm)
    return resample_grid(hu, out_shape, lambda a: window_unit(a, window))


def coarse_labels(
    label: np.ndarray, spacing: tuple[float, float, float], target_mm: float
) -> np.ndarray:
    """LiTS labels on the coarse grid: liver where >= half the covered voxels are liver (>= 1),
    tumour where >= half are tumour (2).

    Args:
        label: (Z, Y, X) uint8 labels 0/1/2.
        spacing: (sz, sy, sx) mm.
        target_mm: Coarse spacing in mm.

    Returns:
        uint8 (D, H, W) labels 0/1/2.
    """
    out_shape = coarse_shape(label.shape, spacing, target_mm)
    liver = resample_grid(label, out_shape, lambda a: (a >= 1).astype(np.float32)) >= 0.5
    tumour = resample_grid(label, out_shape, lambda a: (a == 2).astype(np.float32)) >= 0.5
    out = liver.astype(np.uint8)
    out[tumour & liver] = 2
    return out


def coarse_box_to_input(
    box: tuple[slice, slice, slice],
    shape: tuple[int, int, int],
    out_shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    margin_mm: float,
) -> tuple[slice, slice, slice]:
    """Map a box of coarse voxels to input voxel indices, widened by ``margin_mm``.

    Coarse voxel ``i`` covers input indices ``[i * n / m, (i + 1) * n / m)``; the input box is the
    union of the covered ranges plus ``ceil(margin_mm / s)`` voxels per side, clipped to the
    volume.

    Args:
        box: Slices (start, stop) along (D, H, W) of the coarse grid.
        shape: Input (Z, Y, X).
        out_shape: Coarse (D, H, W).
        spacing: Input (sz, sy, sx) mm.
        margin_mm: Margin added on every side (mm).

    Returns:
        Slices along (Z, Y, X) of the input.
    """
    result = []
    for sl, n, m, s in zip(box, shape, out_shape, spacing, strict=True):
        pad = int(np.ceil(margin_mm / float(s)))
        lo = int(np.floor(sl.start * n / m)) - pad
        hi = int(np.ceil(sl.stop * n / m)) + pad
        result.append(slice(max(lo, 0), min(hi, n)))
    return tuple(result)


def padded_shape(shape: tuple[int, ...], multiple: int, minimum: int = 0) -> tuple[int, ...]:
    """Each size rounded up to a multiple of ``multiple``, and at least ``minimum``."""
    return tuple(max(int(np.ceil(n / multiple) * multiple), minimum) for n in shape)


def pad_to(
    array: np.ndarray, multiple: int, value: float = 0.0, minimum: int = 0
) -> tuple[np.ndarray, tuple]:
    """Pad the last three axes at their end up to multiples of ``multiple`` (and at least
    ``minimum`` samples each).

    Returns:
        (padded array, slices that cut the original back out).
    """
    shape = array.shape[-3:]
    target = padded_shape(shape, multiple, minimum)
    pad = [(0, 0)] * (array.ndim - 3) + [(0, t - n) for t, n in zip(target, shape, strict=True)]
    crop = tuple(slice(0, n) for n in shape)
    return np.pad(array, pad, constant_values=value), crop


def _linear_weights(n_out_full: int, m: int, start: int, stop: int) -> np.ndarray:
    """(stop - start, m) weights of linear interpolation from an m-sample coarse axis to the
    input indices ``start..stop-1`` of an ``n_out_full``-sample axis (centres aligned, ends
    clamped: torch's ``align_corners=False`` trilinear)."""
    k = np.arange(start, stop, dtype=np.float64)
    c = np.clip((k + 0.5) * m / n_out_full - 0.5, 0.0, m - 1)
    lo = np.floor(c).astype(np.int64)
    hi = np.minimum(lo + 1, m - 1)
    frac = c - lo
    w = np.zeros((stop - start, m), dtype=np.float32)
    rows = np.arange(stop - start)
    np.add.at(w, (rows, lo), (1.0 - frac).astype(np.float32))
    np.add.at(w, (rows, hi), frac.astype(np.float32))
    return w


def upsample_to_input(
    coarse: np.ndarray, shape: tuple[int, int, int], box: tuple[slice, slice, slice]
) -> np.ndarray:
    """Linearly interpolate a coarse-grid map back onto the input voxels of ``box``.

    The same mapping as :func:`coarse_image` in reverse (coarse sample ``i`` sits at input
    position ``(i + 0.5) * n / m - 0.5``), computed separably, one small matrix per axis, so only
    the box is ever held at the input resolution.

    Args:
        coarse: (D, H, W) float map on the coarse grid of a (Z, Y, X) = ``shape`` volume.
        shape: The input volume's (Z, Y, X).
        box: Slices (with start and stop) of the input volume wanted.

    Returns:
        float32 array of the box's shape.
    """
    out = np.asarray(coarse, dtype=np.float32)
    for axis in (0, 1, 2):  # the last product is already (Z, Y, X): 3x faster than x first
        sl, n, m = box[axis], shape[axis], coarse.shape[axis]
        w = _linear_weights(n, m, sl.start, sl.stop)
        out = np.moveaxis(np.tensordot(out, w, axes=([axis], [1])), -1, axis)
    return np.ascontiguousarray(out, dtype=np.float32)
