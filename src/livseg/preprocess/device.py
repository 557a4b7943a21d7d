"""livseg's pre-processing in torch, on the networks' device: the slice pipeline of
:func:`livseg.preprocess.pipeline.prepare_slices` and the coarse stage's resampling.

On a GPU the networks take a small part of a case's time; the numpy pre-processing around them
(histogram equalisation, resizing to the working size and the probabilities back to the box) took
most of the host's. These functions run the same arithmetic on the device, so that only the
gathered HU slices go there and only the box-sized probabilities come back:

* the intensity pipelines: HU window clipping, min-max over the *volume's* range, and the
  per-slice histogram equalisation (the same bins, cumulative counts and float64 look-up table as
  :func:`livseg.preprocess.intensity.histogram_equalize`: bit for bit);
* resizing: torch's bilinear ``interpolate``, anti-aliased when down-sampling, whose weights the
  numpy :func:`livseg.preprocess.resample.resize_slices` reproduces (the two agree to float32
  rounding of the sums, about 1e-7);
* the coarse stage's image (:func:`coarse_image`): the window and the resampling of
  :func:`livseg.preprocess.coarse.coarse_image`, with the same weights, products and sums in the
  same order, hence the same values; and the coarse gate's interpolation back to the input
  voxels (:func:`upsample_to_input`: the same weights, the sums' rounding may differ).

Imported only where torch already is (the torch back-end's slice predictor and coarse stage);
the numpy pipeline stays the reference, and the one the training caches use.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from livseg.preprocess import coarse as _coarse
from livseg.preprocess.intensity import _check_window
from livseg.preprocess.pipeline import Box, PreprocessSettings, liver_relative


def window_scale(hu: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """``(clip(hu, lo, hi) - lo) / (hi - lo)``: the CR-U-Net's scaling without equalisation."""
    lo, hi = _check_window(window)
    return (hu.clamp(lo, hi) - np.float32(lo)) * np.float32(1.0 / (hi - lo))


def window_minmax(
    hu: torch.Tensor, window: tuple[float, float], volume_range: tuple[float, float]
) -> torch.Tensor:
    """Clip to ``window``, then min-max over the clipped *volume* range (all zeros when the
    clipped range is empty), as :func:`livseg.preprocess.intensity.window_minmax`."""
    lo, hi = _check_window(window)
    cmin, cmax = (float(np.clip(v, lo, hi)) for v in volume_range)
    if cmax <= cmin:
        return torch.zeros_like(hu)
    return (hu.clamp(lo, hi) - np.float32(cmin)) * np.float32(1.0 / (cmax - cmin))


def histogram_equalize(
    slices: torch.Tensor, window: tuple[float, float], bins: int, box: Box | None = None
) -> torch.Tensor:
    """Per-slice histogram equalisation of (Z, H, W) HU, only the in-plane ``box`` returned.

    The same computation as :func:`livseg.preprocess.intensity.histogram_equalize`, step for step
    (bin index in float32, one ``bincount`` over all slices, int64 cumulative counts, the look-up
    table in float64), hence the same values.
    """
    lo, hi = _check_window(window)
    z, h, w = slices.shape
    y0, y1, x0, x1 = box if box is not None else (0, h, 0, w)
    if z == 0 or h * w == 0:
        return slices.new_zeros((z, y1 - y0, x1 - x0))
    idx = ((slices.clamp(lo, hi) - np.float32(lo)) * np.float32(bins / (hi - lo))).long()
    idx.clamp_(max=bins - 1)
    offsets = torch.arange(z, device=slices.device, dtype=torch.int64) * bins
    flat = (idx.reshape(z, -1) + offsets[:, None]).reshape(-1)
    hist = torch.bincount(flat, minlength=z * bins).reshape(z, bins)
    cdf = torch.cumsum(hist, dim=1)
    first = torch.argmax((hist > 0).to(torch.uint8), dim=1)  # the first occupied bin
    cdf_min = cdf.gather(1, first[:, None]).double()
    denom = h * w - cdf_min
    ok = denom > 0
    lut = torch.where(ok, (cdf - cdf_min) / torch.where(ok, denom, 1.0), 0.0).float()
    lut.clamp_(0.0, 1.0)
    crop = idx[:, y0:y1, x0:x1].reshape(z, -1)
    return lut.gather(1, crop).reshape(z, y1 - y0, x1 - x0)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) float32 -> (N, C, size), bilinear, anti-aliased when down-sampling along
    either axis (the rule of :func:`livseg.preprocess.resample.resize_slices`)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x.clone()
    antialias = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)


def prepare_slices(
    hu: torch.Tensor,
    s: PreprocessSettings,
    volume_range: tuple[float, float],
    box: Box,
    liver_median: float | None = None,
) -> torch.Tensor:
    """:func:`livseg.preprocess.pipeline.prepare_slices` on a tensor: (n, H, W) HU without NaN
    -> (n, C, size, size) float32 in [0, 1], C = ``s.base_channels``."""
    s = liver_relative(s, liver_median)
    y0, y1, x0, x1 = box
    if s.pipeline == "crunet" and s.equalize:
        chan = histogram_equalize(hu, s.windows[0], int(s.hist_bins), box)[:, None]
    elif s.pipeline == "crunet":
        chan = window_scale(hu[:, y0:y1, x0:x1], s.windows[0])[:, None]
    else:  # densefcn_liver (one window) and tumour (one channel per window)
        part = hu[:, y0:y1, x0:x1]
        chan = torch.stack([window_minmax(part, win, volume_range) for win in s.windows], dim=1)
    size = int(s.size)
    return resize(chan, (size, size)).clamp_(0.0, 1.0)


def apply_weights(
    x: torch.Tensor, weights: tuple[np.ndarray, np.ndarray], axis: int
) -> torch.Tensor:
    """:func:`livseg.preprocess.resample.apply_weights` on a tensor: output ``i`` along
    ``axis`` is the sum over k of ``w[i, k] * x[first[i] + k]``, multiplied and added in the
    same float32 steps."""
    first, w = weights
    shape = [1] * x.dim()
    shape[axis] = -1
    first_t = torch.tensor(first, device=x.device)
    w_t = torch.tensor(w, device=x.device)
    out_shape = x.shape[:axis] + (first.size,) + x.shape[axis + 1 :]
    acc = x.new_zeros(out_shape)
    for k in range(w.shape[1]):
        idx = (first_t + k).clamp_(max=x.shape[axis] - 1)
        acc += x.index_select(axis, idx) * w_t[:, k].reshape(shape)
    return acc


def coarse_image(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    target_mm: float,
    window: tuple[float, float],
    device,
) -> torch.Tensor:
    """:func:`livseg.preprocess.coarse.coarse_image` computed on ``device``: (D, H, W) float32
    in [0, 1]. The CT goes there 32 slices at a time (a view of any layout is fine)."""
    lo, hi = np.float32(window[0]), np.float32(window[1])
    scale = np.float32(1.0) / (hi - lo)  # numpy's float32 steps

    def to_float(chunk: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)).to(device)
        t = torch.fmin(torch.fmax(t, t.new_tensor(lo)), t.new_tensor(hi))  # NaN -> lo, inf -> hi
        return (t - lo) * scale

    out_shape = _coarse.coarse_shape(hu.shape, spacing, target_mm)
    return _coarse.resample_grid(
        hu,
        out_shape,
        to_float,
        apply_weights,
        lambda shape: torch.empty(shape, dtype=torch.float32, device=device),
    )


def upsample_to_input(
    coarse: np.ndarray,
    shape: tuple[int, int, int],
    box: tuple[slice, slice, slice],
    device,
    above: float,
) -> np.ndarray:
    """``livseg.preprocess.coarse.upsample_to_input(coarse, shape, box) > above`` computed on
    ``device`` (one small matrix per axis, as there): a bool array of the box's shape."""
    with torch.inference_mode():
        out = torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32)).to(device)
        for axis in (0, 1, 2):
            sl, n, m = box[axis], shape[axis], coarse.shape[axis]
            w = torch.from_numpy(_coarse._linear_weights(n, m, sl.start, sl.stop)).to(device)
            out = torch.movedim(torch.tensordot(out, w, dims=([axis], [1])), -1, axis)
        return (out > above).cpu().numpy()
