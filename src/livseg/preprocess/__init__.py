"""Pre-processing: HU windows, histogram equalisation, min-max, resizing, orientation, slices.

Submodules:
    intensity: HU windows, histogram equalisation, min-max and the per-model pipelines
        (:func:`crunet_input`, :func:`densefcn_liver_input`, :func:`tumour_windows`).
    resample: :func:`resize_slices` (bilinear anti-aliased for images, nearest for labels).
    orientation: :func:`to_canonical` and :class:`Reorientation` (axis permutation/flips only).
    slices: :func:`select_slices` and :func:`inplane_bbox` (liver box of the cascade).
    weight_map: ``border_weight_map(mask, w0, sigma)`` (imported from its module directly).
"""

from livseg.preprocess.intensity import (
    CRUNET_WINDOW,
    DENSEFCN_LIVER_WINDOW,
    TUMOUR_WINDOWS,
    clip_window,
    crunet_input,
    densefcn_liver_input,
    histogram_equalize,
    minmax_normalize,
    tumour_windows,
    window_minmax,
)
from livseg.preprocess.orientation import Reorientation, to_canonical
from livseg.preprocess.resample import resize_slices
from livseg.preprocess.slices import inplane_bbox, select_slices

__all__ = [
    "CRUNET_WINDOW",
    "DENSEFCN_LIVER_WINDOW",
    "TUMOUR_WINDOWS",
    "Reorientation",
    "clip_window",
    "crunet_input",
    "densefcn_liver_input",
    "histogram_equalize",
    "inplane_bbox",
    "minmax_normalize",
    "resize_slices",
    "select_slices",
    "to_canonical",
    "tumour_windows",
    "window_minmax",
]
