"""The per-paper pre-processing pipelines: one definition for training and inference.

A model is trained on slices pre-processed with a :class:`PreprocessSettings` (saved as the
``data`` section of its checkpoint's ``config.json``) and must see exactly the same input at
inference. Both sides therefore call the functions of this module:

* the training slice cache (:func:`livseg.data.cache.build_slice_cache`) and
* the predictor (:class:`livseg.infer.predictor.SlicePredictor`).

The steps, per axial slice of a canonical (Z, Y, X) HU volume:

1. gather the slice with its 2.5-D context (:func:`context_indices`: offset-major, the end
   slices replicated at the volume ends);
2. the intensity pipeline (:func:`preprocess_slices`: HU window + per-slice histogram
   equalisation, whose histograms are those of the *full* slice, or HU window(s) + min-max over
   the *whole volume's* range);
3. crop the in-plane box (:func:`crop_box`: the whole slice, or the liver box + margin, squared,
   for the tumour stage), resize to ``(size, size)`` and clip to [0, 1]
   (:func:`prepare_slices` does 2 and 3; since the min-max pipelines work voxel by voxel, it
   runs them on the box alone, and maps only the box through the equalisation: the same
   values as the whole slices' pipeline cropped).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from livseg.errors import LivsegError
from livseg.preprocess.bbox import inplane_bbox
from livseg.preprocess.coarse import COARSE_WINDOW
from livseg.preprocess.intensity import (
    CRUNET_WINDOW,
    DEFAULT_HIST_BINS,
    DENSEFCN_LIVER_WINDOW,
    TUMOUR_WINDOWS,
    crunet_input,
    densefcn_liver_input,
    tumour_windows,
)
from livseg.preprocess.resample import resize_slices

logger = logging.getLogger(__name__)

#: Bumped whenever the pre-processing code changes meaning: it is part of :meth:`key`, so old
#: slice caches are not reused. (The slice cache's on-disk layout has its own version,
#: ``livseg.data.cache.CACHE_FORMAT_VERSION``.)
PREPROCESS_VERSION = 1

Pipeline = Literal["crunet", "densefcn_liver", "tumour", "coarse"]
PIPELINES: tuple[str, ...] = ("crunet", "densefcn_liver", "tumour", "coarse")
SLICE_PIPELINES: tuple[str, ...] = ("crunet", "densefcn_liver", "tumour")
"""Pipelines whose models take axial slices; ``coarse`` takes the whole CT as one 3-D volume."""
DEFAULT_COARSE_SPACING_MM = 4.0
FOREGROUNDS: tuple[str, ...] = ("liver", "tumour", "all")
DTYPES: tuple[str, ...] = ("float32", "float16")

_DEFAULT_WINDOWS: dict[str, tuple[tuple[float, float], ...]] = {
    "crunet": (CRUNET_WINDOW,),
    "densefcn_liver": (DENSEFCN_LIVER_WINDOW,),
    "tumour": TUMOUR_WINDOWS,
    "coarse": (COARSE_WINDOW,),
}
#: Default slice selection per pipeline: (foreground, margin in slices). The DenseNet-FCN paper
#: uses liver +-10 and tumour +-5; the CR-U-Net paper gives none (our default: liver +-10).
_DEFAULT_SELECTION: dict[str, tuple[str, int]] = {
    "crunet": ("liver", 10),
    "densefcn_liver": ("liver", 10),
    "tumour": ("tumour", 5),
    "coarse": ("all", 0),
}

Box = tuple[int, int, int, int]
"""In-plane box (y0, y1, x0, x1), exclusive ends, in pixels."""


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything that determines a model's input (and a slice cache's content and key).

    Attributes:
        pipeline: "crunet" (HU window + per-slice histogram equalisation), "densefcn_liver"
            (HU window + volume min-max), "tumour" (3 HU windows, each volume min-max), or
            "coarse": the whole CT resampled to ``spacing_mm`` and windowed to [0, 1], one 3-D
            volume (:mod:`livseg.preprocess.coarse`; the slice fields below do not apply).
        size: Working in-plane resolution in pixels (e.g. 512, 256, 128); slices are resized
            to (size, size).
        foreground: Slice selection: "liver" (label >= 1), "tumour" (label == 2) or "all".
            None: the pipeline's default (liver for the liver models, tumour for the tumour one).
        margin: Slices kept above and below the foreground slices; None: pipeline default
            (10 for the liver models, 5 for the tumour model).
        context: 2.5-D context: k adjacent slices on each side stacked as channels
            (offset-major: channels of slice z-k first), replicating the end slices at the volume
            ends; 0 = single slice.
        weight_map: Also cache a border weight map (``border_weight_map`` of the liver mask, or
            of the tumour mask for the tumour pipeline) computed on the resized label.
        weight_w0: Weight map amplitude w0.
        weight_sigma: Weight map width sigma, in pixels of the cached (working-size) slices.
        crop_to_liver: Crop every slice to the in-plane bounding box of the case's liver (all
            slices together) + ``crop_margin``, squared, before resizing to ``size`` (the tumour
            stage of the cascade).
        crop_margin: Margin of the liver box in pixels of the canonical input slices.
        dtype: Stored image (and weight) dtype: "float32" or "float16" (half the disk).
        windows: HU windows (lo, hi): one for the liver pipelines, one per channel for the
            tumour pipeline; None: the pipeline's defaults from the papers.
        hist_bins: Histogram bins of the CR-U-Net equalisation.
        equalize: CR-U-Net only: False disables the histogram equalisation.
        spacing_mm: Coarse pipeline only: the grid spacing in mm (default 4); None for the slice
            pipelines (and then not part of the settings' dict or key).
        liver_hu: Tumour pipeline only: the HU windows move with the case's liver, as if the CT
            were shifted so that the median HU of its liver is this value (the reference liver
            in training, the fine stage's liver at inference): lesion contrast is relative to the
            parenchyma, whose HU varies with the contrast phase and the scanner by more than the
            windows' width. None: fixed windows (the paper; not part of the dict or key).

    Raises:
        LivsegError: An unknown pipeline, foreground or dtype, a size below 8, a negative
            margin/context/crop_margin, a window with lo >= hi, or several windows for a liver
            pipeline.
    """

    pipeline: Pipeline
    size: int = 256
    foreground: Literal["liver", "tumour", "all"] | None = None
    margin: int | None = None
    context: int = 0
    weight_map: bool = False
    weight_w0: float = 5.0
    weight_sigma: float = 5.0
    crop_to_liver: bool = False
    crop_margin: int = 10
    dtype: Literal["float32", "float16"] = "float32"
    windows: tuple[tuple[float, float], ...] | None = None
    hist_bins: int = DEFAULT_HIST_BINS
    equalize: bool = True
    spacing_mm: float | None = None
    liver_hu: float | None = None

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise LivsegError(
                f"pre-processing pipeline {self.pipeline!r} is unknown; "
                f"valid: {', '.join(PIPELINES)}"
            )
        self._fill_defaults()
        self._check_values()
        _check_windows(self.pipeline, self.windows)

    def _fill_defaults(self) -> None:
        """Replace the None fields by the pipeline's defaults; windows become float tuples."""
        fg, margin = _DEFAULT_SELECTION[self.pipeline]
        if self.foreground is None:
            object.__setattr__(self, "foreground", fg)
        if self.margin is None:
            object.__setattr__(self, "margin", margin)
        windows = _DEFAULT_WINDOWS[self.pipeline] if self.windows is None else self.windows
        object.__setattr__(self, "windows", tuple((float(lo), float(hi)) for lo, hi in windows))
        if self.pipeline == "coarse" and self.spacing_mm is None:
            object.__setattr__(self, "spacing_mm", DEFAULT_COARSE_SPACING_MM)

    def _check_values(self) -> None:
        if self.foreground not in FOREGROUNDS:
            raise LivsegError(
                f"foreground must be 'liver', 'tumour' or 'all', got {self.foreground!r}"
            )
        if int(self.size) < 8:
            raise LivsegError(f"size must be >= 8 pixels, got {self.size}")
        if min(self.margin, self.context, self.crop_margin) < 0:
            raise LivsegError("margin, context and crop_margin must be >= 0")
        if self.dtype not in DTYPES:
            raise LivsegError(f"dtype must be 'float32' or 'float16', got {self.dtype!r}")
        if self.spacing_mm is not None and (
            self.pipeline != "coarse" or not float(self.spacing_mm) > 0
        ):
            raise LivsegError(
                f"spacing_mm applies to the coarse pipeline only and must be > 0; "
                f"got {self.spacing_mm!r} for pipeline {self.pipeline!r}"
            )
        if self.liver_hu is not None and (
            self.pipeline != "tumour" or not np.isfinite(float(self.liver_hu))
        ):
            raise LivsegError(
                f"liver_hu applies to the tumour pipeline only and must be a finite HU value; "
                f"got {self.liver_hu!r} for pipeline {self.pipeline!r}"
            )

    @property
    def base_channels(self) -> int:
        """Channels of one pre-processed slice (3 for the tumour windows, else 1)."""
        return len(self.windows) if self.pipeline == "tumour" else 1

    @property
    def channels(self) -> int:
        """Channels C of a network input: base channels x (2 * context + 1)."""
        return self.base_channels * (2 * self.context + 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (windows as lists)."""
        d = dataclasses.asdict(self)
        d["windows"] = [list(w) for w in self.windows]
        for name in ("spacing_mm", "liver_hu"):  # unset: not in the dict (keys unchanged)
            if d[name] is None:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSettings:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise LivsegError(f"unknown pre-processing settings: {', '.join(sorted(unknown))}")
        d = dict(d)
        if d.get("windows") is not None:
            d["windows"] = tuple(tuple(w) for w in d["windows"])
        return cls(**d)

    def key(self) -> str:
        """Cache folder name: ``<pipeline>_s<size>_<12 hex digits of the settings hash>``
        (``coarse_<spacing>mm_<digits>`` for the coarse pipeline)."""
        payload = json.dumps({"format": PREPROCESS_VERSION, **self.to_dict()}, sort_keys=True)
        digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
        if self.pipeline == "coarse":
            return f"coarse_{self.spacing_mm:g}mm_{digest}"
        return f"{self.pipeline}_s{self.size}_{digest}"


def _check_windows(pipeline: str, windows: tuple[tuple[float, float], ...]) -> None:
    if pipeline != "tumour" and len(windows) != 1:
        raise LivsegError(f"pipeline {pipeline!r} takes one HU window, got {len(windows)}")
    for lo, hi in windows:
        if not hi > lo:
            raise LivsegError(f"HU window ({lo}, {hi}) must have lo < hi")


def preprocess_slices(
    hu: np.ndarray, s: PreprocessSettings, volume_range: tuple[float, float]
) -> np.ndarray:
    """Apply the intensity pipeline of ``s`` to a chunk of full axial slices.

    Args:
        hu: (n, H, W) slices in HU.
        s: the pre-processing settings (pipeline, HU windows, histogram equalisation).
        volume_range: the whole volume's (min, max) HU, for the pipelines that min-max normalise
            over the volume, so that chunks give identical results.

    Returns:
        (n, C, H, W) float32 at the input resolution (cropping and resizing:
        :func:`prepare_slices`).
    """
    if s.pipeline == "crunet":
        return crunet_input(hu, window=s.windows[0], bins=s.hist_bins, equalize=s.equalize)[:, None]
    if s.pipeline == "densefcn_liver":
        return densefcn_liver_input(hu, size=None, window=s.windows[0], volume_range=volume_range)[
            :, None
        ]
    return tumour_windows(hu, windows=s.windows, volume_range=volume_range)


def liver_relative(s: PreprocessSettings, liver_median: float | None) -> PreprocessSettings:
    """The settings with the HU windows moved by the case's liver (``s.liver_hu``).

    Shifting the windows by ``liver_median - s.liver_hu`` is the same as shifting the CT (and
    its value range) by ``s.liver_hu - liver_median``: the liver's median lands on ``liver_hu``.

    Args:
        s: the pre-processing settings.
        liver_median: median HU of the case's liver (:func:`liver_median_hu`); needed when
            ``s.liver_hu`` is set, ignored otherwise.

    Raises:
        LivsegError: ``s.liver_hu`` is set and ``liver_median`` is None or not finite.
    """
    if s.liver_hu is None:
        return s
    if liver_median is None or not np.isfinite(liver_median):
        raise LivsegError(
            f"this {s.pipeline} model's windows follow the liver (liver_hu {s.liver_hu:g}); "
            "it needs the case's liver median HU"
        )
    d = float(liver_median) - float(s.liver_hu)
    return dataclasses.replace(s, windows=tuple((lo + d, hi + d) for lo, hi in s.windows))


def liver_median_hu(hu: np.ndarray, liver: np.ndarray, max_voxels: int = 2_000_000) -> float:
    """Median HU of the finite voxels of ``liver`` (NaN when there are none).

    Args:
        hu: (Z, Y, X) HU.
        liver: same-shape mask (non-zero = liver).
        max_voxels: at most this many voxels, evenly strided over the mask, enter the median
            (bounds the time and memory on large livers; the median of a subsample this size
            differs by far less than 1 HU).
    """
    idx = np.flatnonzero(liver)
    if idx.size > max_voxels:
        idx = idx[:: -(-idx.size // max_voxels)]
    values = np.asarray(hu)[np.unravel_index(idx, liver.shape)].astype(np.float32)  # views too
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else float("nan")


def needs_whole_slices(s: PreprocessSettings) -> bool:
    """Whether the intensity pipeline of ``s`` needs whole slices (histogram equalisation);
    the others work voxel by voxel given the volume's range, so the crop alone suffices."""
    return s.pipeline == "crunet" and s.equalize


def prepare_slices(
    hu: np.ndarray,
    s: PreprocessSettings,
    volume_range: tuple[float, float],
    box: Box,
    liver_median: float | None = None,
) -> np.ndarray:
    """Pre-processed slices at the working size: intensity pipeline, crop, resize, clip.

    Args:
        hu: (n, H, W) full slices in HU (no NaN).
        s: the pre-processing settings.
        volume_range: the whole volume's (min, max) HU (see :func:`preprocess_slices`).
        box: in-plane crop (y0, y1, x0, x1), exclusive ends, applied after the intensity
            pipeline (so histogram equalisation always sees the full slice).
        liver_median: the case's liver median HU, for settings with ``liver_hu``
            (:func:`liver_relative`).

    Returns:
        (n, C, size, size) float32 in [0, 1], C = ``s.base_channels``.
    """
    s = liver_relative(s, liver_median)
    y0, y1, x0, x1 = box
    if needs_whole_slices(s):  # histograms of the full slices, values of the box
        chan = crunet_input(hu, window=s.windows[0], bins=s.hist_bins, box=box)[:, None]
    else:  # voxel by voxel given the volume's range: the box alone gives the same values
        chan = preprocess_slices(hu[..., y0:y1, x0:x1], s, volume_range)
    return np.clip(resize_slices(chan, int(s.size), "image"), 0.0, 1.0)


def context_indices(slices: np.ndarray, context: int, depth: int) -> np.ndarray:
    """Source slice of every 2.5-D input channel group.

    Args:
        slices: (N,) slice indices.
        context: k slices on each side.
        depth: number of slices Z of the volume (the ends are replicated).

    Returns:
        (N, 2k+1) int64: row i is ``slices[i] - k .. slices[i] + k`` clipped to [0, Z - 1].
    """
    ks = np.asarray(slices, dtype=np.int64)
    offsets = np.arange(-context, context + 1, dtype=np.int64)
    return np.clip(ks[:, None] + offsets[None, :], 0, depth - 1)


def crop_box(
    liver: np.ndarray,
    s: PreprocessSettings,
    origin: tuple[int, int] = (0, 0),
    image_shape: tuple[int, int] | None = None,
) -> Box | None:
    """The in-plane crop a model was trained with, for one volume.

    Args:
        liver: (Z, H, W) liver mask (non-zero = liver) in canonical layout.
        s: the pre-processing settings.
        origin: (y, x) of ``liver``'s first pixel in the slices, when it is a window of them.
        image_shape: (H, W) of the slices (default: ``liver``'s own).

    Returns:
        (y0, y1, x0, x1), exclusive ends, in the slices' pixels: the liver's in-plane box over all
        slices + ``s.crop_margin``, squared (:func:`livseg.preprocess.bbox.inplane_bbox`) when
        ``s.crop_to_liver``; the whole slice otherwise. None when ``s.crop_to_liver`` and
        ``liver`` is empty.
    """
    h, w = image_shape if image_shape is not None else liver.shape[1:]
    if s.crop_to_liver:
        return inplane_bbox(liver, int(s.crop_margin), True, origin, (h, w))
    return 0, h, 0, w
