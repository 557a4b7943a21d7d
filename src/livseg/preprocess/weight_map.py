"""Border weight maps for the spatially weighted cross-entropy of the liver DenseFCN (Kaluva et al.).

Pixels near the liver border weigh more than the interior and the far background:
``w = 1 + w0 * exp(-d^2 / (2 * sigma^2))`` with ``d`` the Euclidean distance, in pixels, from the
pixel centre to the nearest liver *boundary pixel*. Boundary pixels are the liver pixels with at
least one 4-connected background neighbour inside the slice (the slice edge is not a boundary), so
they get ``d = 0`` and the highest weight ``1 + w0``. The paper gives no formula; ``w0 = 5`` and
``sigma = 5`` px are our defaults (SPEC section 2), both options.
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from livseg.errors import LivsegError

logger = logging.getLogger("livseg.preprocess.weight_map")

__all__ = ["border_weight_map", "WeightMapError"]

_CROSS = ndimage.generate_binary_structure(2, 1)


class WeightMapError(LivsegError, ValueError):
    """Bad input to :func:`border_weight_map`."""


def _slice_weights(mask: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    boundary = mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=1)
    if not boundary.any():
        return np.ones(mask.shape, dtype=np.float32)
    d = ndimage.distance_transform_edt(~boundary)
    return (1.0 + w0 * np.exp(-(d**2) / (2.0 * sigma**2))).astype(np.float32)


def border_weight_map(mask: ArrayLike, w0: float = 5.0, sigma: float = 5.0) -> np.ndarray:
    """Weight map emphasising the liver border, per 2-D slice.

    Args:
        mask: Reference liver mask, (H, W) or a stack (N, H, W); nonzero = liver (so a LiTS label
            slice works as is: liver and tumour both count).
        w0: Extra weight at the boundary (>= 0; default 5).
        sigma: Fall-off of the extra weight in pixels (> 0; default 5).

    Returns:
        float32 array of the mask's shape, values in ``[1, 1 + w0]``. A slice with no boundary
        (empty, or liver everywhere) gets weight 1 everywhere.

    Raises:
        WeightMapError: Not 2-D or 3-D, or a bad ``w0``/``sigma``.
    """
    arr = np.asarray(mask)
    if arr.ndim not in (2, 3):
        raise WeightMapError(
            f"border_weight_map takes a mask (H, W) or a stack (N, H, W); got shape {arr.shape}"
        )
    if not w0 >= 0:
        raise WeightMapError(f"w0 must be >= 0; got {w0}")
    if not sigma > 0:
        raise WeightMapError(f"sigma must be > 0; got {sigma}")
    binary = arr != 0
    if arr.ndim == 2:
        return _slice_weights(binary, float(w0), float(sigma))
    out = np.empty(arr.shape, dtype=np.float32)
    for i in range(arr.shape[0]):
        out[i] = _slice_weights(binary[i], float(w0), float(sigma))
    return out
