"""Intensity pre-processing: HU windows, histogram equalisation, min-max, per-model pipelines.

Everything here is pure, vectorised numpy and returns float32. Arrays are stacks of axial slices
``(Z, H, W)`` in Hounsfield units (HU) unless stated otherwise.

The three model pipelines (defaults from the papers, see ``SPEC.md``):

* :func:`crunet_input` (CR-U-Net liver model): clip to [-200, 250] HU, histogram-equalise each
  clipped slice, result in [0, 1].
* :func:`densefcn_liver_input` (DenseFCN liver model): clip to [-100, 300] HU, min-max normalise
  over the whole volume, resize 512 -> 256.
* :func:`tumour_windows` (DenseFCN tumour model): three windows [0, 100], [-100, 200],
  [-100, 400] HU, each min-max normalised over the whole volume, stacked as 3 channels.

**Min-max convention.** The DenseNet-FCN paper says "min-max normalisation on the entire volume".
We normalise with the *data* minimum and maximum of the clipped volume, ``(c - min(c)) /
(max(c) - min(c))`` with ``c = clip(hu, lo, hi)``. For typical abdominal CT the data span the whole
window, so this equals the window scaling ``(c - lo) / (hi - lo)``; they differ only when the
volume does not reach a window end (e.g. a volume stored clipped to [-1024, 1024] still reaches
both ends of every window we use). A constant clipped volume maps to all zeros. Because clipping is
monotonic, ``min(clip(hu)) == clip(min(hu))``: the statistics of a whole volume can be passed as
``data_range`` so that a volume can be processed in chunks of slices with identical results.
"""

from __future__ import annotations

import logging

import numpy as np

from livseg.preprocess.resample import resize_slices

logger = logging.getLogger(__name__)

#: HU given to non-finite (NaN/inf) voxels before pre-processing: air, at the fill value CT
#: scanners store outside the reconstruction circle (the lowest value of 12-bit CT).
AIR_HU: float = -1024.0
#: CR-U-Net HU window (paper).
CRUNET_WINDOW: tuple[float, float] = (-200.0, 250.0)
#: DenseFCN liver-model HU window (paper).
DENSEFCN_LIVER_WINDOW: tuple[float, float] = (-100.0, 300.0)
#: DenseFCN tumour-model HU windows, one per input channel (paper).
TUMOUR_WINDOWS: tuple[tuple[float, float], ...] = ((0.0, 100.0), (-100.0, 200.0), (-100.0, 400.0))
#: Histogram bins used by :func:`histogram_equalize` (over the window, not over the data).
DEFAULT_HIST_BINS: int = 1024


def _check_window(window: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in window)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        raise ValueError(f"HU window must be (lo, hi) with lo < hi, got {window}")
    return lo, hi


def clip_window(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip intensities to an HU window.

    Args:
        hu: Array of any shape in HU.
        window: (lo, hi) in HU, lo < hi.

    Returns:
        float32 array of the same shape with values in [lo, hi].
    """
    lo, hi = _check_window(window)
    return np.clip(np.asarray(hu, dtype=np.float32), lo, hi)


def data_range(hu: np.ndarray) -> tuple[float, float]:
    """(min, max) of an array in HU, for passing whole-volume statistics to chunked calls."""
    hu = np.asarray(hu)
    if hu.size == 0:
        raise ValueError("cannot take the intensity range of an empty array")
    return float(hu.min()), float(hu.max())


def minmax_normalize(x: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Min-max normalise to [0, 1].

    Args:
        x: Array of any shape.
        value_range: (min, max) to use instead of the data's own; values outside map outside
            [0, 1] (they are not clipped).

    Returns:
        float32 array, ``(x - min) / (max - min)``; all zeros when ``max == min`` (a constant
        input carries no contrast).
    """
    x = np.asarray(x, dtype=np.float32)
    lo, hi = (
        data_range(x) if value_range is None else (float(value_range[0]), float(value_range[1]))
    )
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float32)
    out = (x - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return out.astype(np.float32, copy=False)


def window_minmax(
    hu: np.ndarray,
    window: tuple[float, float],
    volume_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Clip to an HU window, then min-max normalise over the clipped data.

    Args:
        hu: (Z, H, W) HU slices (any shape works).
        window: (lo, hi) HU window.
        volume_range: (min, max) HU of the *whole* volume when ``hu`` is only a chunk of it;
            default: the range of ``hu`` itself.

    Returns:
        float32 array of the same shape in [0, 1] (all zeros for a constant clipped volume).
    """
    lo, hi = _check_window(window)
    vmin, vmax = data_range(hu) if volume_range is None else volume_range
    cmin, cmax = float(np.clip(vmin, lo, hi)), float(np.clip(vmax, lo, hi))
    return minmax_normalize(clip_window(hu, (lo, hi)), (cmin, cmax))


def histogram_equalize(
    slices: np.ndarray,
    window: tuple[float, float],
    bins: int = DEFAULT_HIST_BINS,
    box: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Histogram-equalise each slice of a stack of (clipped) slices, vectorised over slices.

    For every slice, the values are binned into ``bins`` equal bins spanning ``window`` (values
    outside are clipped first); the cumulative histogram ``cdf`` of the slice gives the output
    ``(cdf[b] - cdf_min) / (n - cdf_min)``, where ``b`` is the voxel's bin, ``cdf_min`` the count
    of the lowest occupied bin and ``n`` the slice's pixel count (the classic OpenCV
    ``equalizeHist`` form). Hence the darkest pixels (e.g. air clipped to the lower window end) map
    to 0, the brightest to 1, and the result is in [0, 1]. With 1024 bins over a 450 HU window a
    bin is 0.44 HU wide, finer than integer HU, so binning loses nothing on integer CT.

    Args:
        slices: (Z, H, W) or (H, W) array in HU.
        window: (lo, hi) HU range of the bins.
        bins: Number of histogram bins (>= 2).
        box: (y0, y1, x0, x1): return only this in-plane box of the equalised slices (their
            histograms are still those of the whole slices).

    Returns:
        float32 array of the input's shape (or the box's) in [0, 1]. A constant slice maps to
        all zeros.
    """
    lo, hi = _check_window(window)
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    arr = np.asarray(slices, dtype=np.float32)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"slices must be (Z, H, W) or (H, W), got shape {arr.shape}")
    z, h, w = arr.shape
    n = h * w
    y0, y1, x0, x1 = box if box is not None else (0, h, 0, w)
    if z == 0 or n == 0:
        return np.zeros(np.shape(slices)[:-2] + (y1 - y0, x1 - x0), dtype=np.float32)
    # bin index per voxel, 0..bins-1
    scale = np.float32(bins / (hi - lo))
    idx = ((np.clip(arr, lo, hi) - np.float32(lo)) * scale).astype(np.int64)
    np.minimum(idx, bins - 1, out=idx)
    # per-slice histograms in one bincount
    flat = idx.reshape(z, n) + (np.arange(z, dtype=np.int64) * bins)[:, None]
    hist = np.bincount(flat.ravel(), minlength=z * bins).reshape(z, bins)
    cdf = np.cumsum(hist, axis=1, dtype=np.int64)
    # count in the lowest occupied bin = cdf at the first non-zero histogram entry
    first = np.argmax(hist > 0, axis=1)
    cdf_min = cdf[np.arange(z), first].astype(np.float64)
    denom = n - cdf_min
    lut = np.zeros((z, bins), dtype=np.float32)
    ok = denom > 0
    lut[ok] = ((cdf[ok] - cdf_min[ok, None]) / denom[ok, None]).astype(np.float32)
    np.clip(lut, 0.0, 1.0, out=lut)
    crop = idx[:, y0:y1, x0:x1].reshape(z, -1)
    out = np.take_along_axis(lut, crop, axis=1).reshape(z, y1 - y0, x1 - x0)
    return out[0] if squeeze else out


def crunet_input(
    hu_slices: np.ndarray,
    window: tuple[float, float] = CRUNET_WINDOW,
    bins: int = DEFAULT_HIST_BINS,
    equalize: bool = True,
    size: int | tuple[int, int] | None = None,
    box: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """CR-U-Net pre-processing: clip HU, histogram-equalise per slice, scale to [0, 1].

    Per-slice operation, so any subset of slices can be processed independently.

    Args:
        hu_slices: (Z, H, W) or (H, W) HU.
        window: (lo, hi) HU window, default [-200, 250] (paper).
        bins: Histogram bins over the window for the equalisation.
        equalize: False skips the equalisation (window scaling only; for ablations).
        size: Optional output in-plane size (int or (H, W)); resized bilinearly with
            anti-aliasing *after* the equalisation. None keeps the input size.
        box: (y0, y1, x0, x1): only this in-plane box of the result (the equalisation still
            uses the whole slices' histograms), before any resizing.

    Returns:
        float32 (Z, H', W') (or (H', W')) in [0, 1].
    """
    lo, hi = _check_window(window)
    arr = np.asarray(hu_slices, dtype=np.float32)
    if equalize:
        out = histogram_equalize(arr, (lo, hi), bins, box)
    else:
        if box is not None:
            arr = arr[..., box[0] : box[1], box[2] : box[3]]
        out = (clip_window(arr, (lo, hi)) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    if size is not None:
        squeeze = out.ndim == 2
        out = resize_slices(out[None] if squeeze else out, size, kind="image")
        out = np.clip(out, 0.0, 1.0)
        out = out[0] if squeeze else out
    return out.astype(np.float32, copy=False)


def densefcn_liver_input(
    hu_volume: np.ndarray,
    size: int | tuple[int, int] | None = 256,
    window: tuple[float, float] = DENSEFCN_LIVER_WINDOW,
    volume_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """DenseFCN liver-model pre-processing: clip HU, min-max over the volume, down-sample.

    Args:
        hu_volume: (Z, H, W) HU; the whole volume, or a chunk of it together with
            ``volume_range``.
        size: Output in-plane size (int or (H, W)); default 256 (paper: 512 -> 256). None keeps
            the input size.
        window: (lo, hi) HU window, default [-100, 300] (paper).
        volume_range: (min, max) HU of the whole volume when ``hu_volume`` is a chunk.

    Returns:
        float32 (Z, size, size) in [0, 1].
    """
    arr = np.asarray(hu_volume, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"hu_volume must be (Z, H, W), got shape {arr.shape}")
    out = window_minmax(arr, window, volume_range)
    if size is not None:
        out = np.clip(resize_slices(out, size, kind="image"), 0.0, 1.0)
    return out.astype(np.float32, copy=False)


def tumour_windows(
    hu_volume: np.ndarray,
    windows: tuple[tuple[float, float], ...] = TUMOUR_WINDOWS,
    volume_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """DenseFCN tumour-model pre-processing: several HU windows, each min-max normalised.

    Args:
        hu_volume: (Z, H, W) HU; the whole volume, or a chunk of it together with
            ``volume_range``.
        windows: (lo, hi) HU windows, one per output channel; default [0, 100], [-100, 200],
            [-100, 400] (paper).
        volume_range: (min, max) HU of the whole volume when ``hu_volume`` is a chunk.

    Returns:
        float32 (Z, len(windows), H, W) in [0, 1]. No resizing here: the cascade crops the liver
        box first and resizes the crop (:func:`livseg.preprocess.resample.resize_slices`).
    """
    arr = np.asarray(hu_volume, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"hu_volume must be (Z, H, W), got shape {arr.shape}")
    if len(windows) == 0:
        raise ValueError("at least one HU window is needed")
    vr = data_range(arr) if volume_range is None else volume_range
    out = np.empty((arr.shape[0], len(windows), *arr.shape[1:]), dtype=np.float32)
    for c, win in enumerate(windows):
        out[:, c] = window_minmax(arr, win, vr)
    return out
