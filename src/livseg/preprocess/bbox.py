"""Bounding boxes of masks: the one home of box code (crops, metrics, post-processing, reports).

* :func:`bounding_box`: N-D box as slices, optionally padded (clipped to the array);
* :func:`inplane_bbox`: in-plane (y, x) box of a (Z, H, W) mask over all slices, with a margin,
  optionally squared: the liver crop of the tumour stage.

Both return None for an empty mask. The box is read from one boolean projection per axis
(``np.any`` over the other axes, vectorised): on a 300 x 512 x 512 mask this takes about 15 ms,
against about 150 ms for :func:`scipy.ndimage.find_objects` (which walks every voxel through a
generic iterator), and the metric set calls it several times per case.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bounding_box(mask: np.ndarray, pad: int | Sequence[int] = 0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every non-zero voxel of ``mask``, grown by ``pad``.

    Args:
        mask: N-D boolean array (any dtype: non-zero = inside).
        pad: voxels added on each side, one number for every axis or one per axis; the box is
            clipped to the array.

    Returns:
        One ``slice(start, stop)`` per axis (exclusive stop), or None when ``mask`` has no
        non-zero voxel (also when it has no voxel at all).
    """
    mask = np.asarray(mask, dtype=bool)
    pads = (int(pad),) * mask.ndim if isinstance(pad, int | np.integer) else tuple(pad)
    if len(pads) != mask.ndim:
        raise ValueError(f"pad needs one value per axis ({mask.ndim}), got {pads}")
    box = []
    for axis, (p, n) in enumerate(zip(pads, mask.shape, strict=True)):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        inside = np.flatnonzero(np.any(mask, axis=other) if other else mask)
        if inside.size == 0:
            return None
        box.append(slice(max(int(inside[0]) - p, 0), min(int(inside[-1]) + 1 + p, n)))
    return tuple(box)


def inplane_bbox(
    mask: np.ndarray,
    margin: int = 0,
    square: bool = False,
    origin: tuple[int, int] = (0, 0),
    image_shape: tuple[int, int] | None = None,
) -> tuple[int, int, int, int] | None:
    """In-plane bounding box of a mask over all slices, with a margin.

    Args:
        mask: (Z, H, W) or (H, W) boolean (or label, non-zero = inside) array.
        margin: Pixels added on every side, clipped to the image.
        square: Grow the shorter side (centred, shifted to stay inside the image) so that the
            box is square when the image allows; resizing a square box to a square working
            size keeps the aspect ratio.
        origin: (y, x) of ``mask``'s first pixel in the image, when the mask is a window of a
            larger image; the box is then in the image's pixels.
        image_shape: (H, W) of that image (default: the mask's own).

    Returns:
        (y0, y1, x0, x1) with exclusive ends, in pixels; None when the mask is empty.

    Raises:
        ValueError: ``mask`` is not 2-D or 3-D, or ``margin`` < 0.
    """
    mask = np.asarray(mask) != 0
    if mask.ndim not in (2, 3):
        raise ValueError(f"mask must be (Z, H, W) or (H, W), got shape {mask.shape}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    box = bounding_box(mask)
    if box is None:
        return None
    h, w = image_shape if image_shape is not None else mask.shape[-2:]
    (y0, y1), (x0, x1) = ((s.start + o, s.stop + o) for s, o in zip(box[-2:], origin, strict=True))
    y0, y1 = max(y0 - margin, 0), min(y1 + margin, h)
    x0, x1 = max(x0 - margin, 0), min(x1 + margin, w)
    if square:
        return square_box((y0, y1, x0, x1), (h, w))
    return y0, y1, x0, x1


def square_box(box: tuple[int, int, int, int], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Grow the shorter side of an in-plane box (centred, shifted to stay inside an image of
    ``shape`` (H, W)) so that it is square when the image allows."""
    y0, y1, x0, x1 = box
    h, w = shape
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
