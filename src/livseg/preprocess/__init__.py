"""Pre-processing: HU windows, histogram equalisation, min-max, resizing, orientation, slices.

Submodules:
    intensity: HU windows, histogram equalisation, min-max and the per-model pipelines
        (:func:`crunet_input`, :func:`densefcn_liver_input`, :func:`tumour_windows`).
    resample: :func:`resize_slices` (bilinear anti-aliased for images, nearest for labels).
    orientation: :func:`to_canonical`, :func:`canonical_view` and :class:`Reorientation`
        (axis permutation/flips only).
    slices: :func:`select_slices`.
    bbox: :func:`bounding_box` (N-D, padded) and :func:`inplane_bbox` (liver box of the cascade).
    pipeline: :class:`PreprocessSettings` and the pipeline that training (slice cache) and
        inference (predictor) both call: :func:`preprocess_slices`, :func:`prepare_slices`,
        :func:`context_indices`, :func:`crop_box`.
    weight_map: ``border_weight_map(mask, w0, sigma)`` (imported from its module directly).
"""

from livseg.preprocess.bbox import bounding_box, inplane_bbox
from livseg.preprocess.intensity import (
    AIR_HU,
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
from livseg.preprocess.orientation import Reorientation, canonical_view, to_canonical
from livseg.preprocess.pipeline import (
    PreprocessSettings,
    context_indices,
    crop_box,
    liver_median_hu,
    liver_relative,
    prepare_slices,
    preprocess_slices,
)
from livseg.preprocess.resample import resize_slices
from livseg.preprocess.slices import select_slices

__all__ = [
    "AIR_HU",
    "CRUNET_WINDOW",
    "DENSEFCN_LIVER_WINDOW",
    "TUMOUR_WINDOWS",
    "PreprocessSettings",
    "Reorientation",
    "bounding_box",
    "canonical_view",
    "clip_window",
    "context_indices",
    "liver_median_hu",
    "liver_relative",
    "crop_box",
    "crunet_input",
    "densefcn_liver_input",
    "histogram_equalize",
    "inplane_bbox",
    "minmax_normalize",
    "prepare_slices",
    "preprocess_slices",
    "resize_slices",
    "select_slices",
    "to_canonical",
    "tumour_windows",
    "window_minmax",
]
