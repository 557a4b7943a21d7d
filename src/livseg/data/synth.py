"""Synthetic liver lesions painted into training slices (tumour-stage augmentation).

Five labelled CTs hold a few dozen lesions, most of them in one case; a tumour network trained on
them sees few lesion shapes, sizes and contrasts. Following the idea of Hu et al., "Label-Free
Liver Tumor Segmentation" (CVPR 2023: tumours synthesised in the liver train a segmenter about
as well as real ones), :func:`paint_lesions` adds a few lesions to a slice's liver:

* **shape**: an ellipse (axis ratio 0.6-1, any angle) whose radius is perturbed by smooth random
  noise, so the outline is irregular, with a soft edge (Gaussian blur, 0.5-1.5 px);
* **place**: centred on a liver pixel (not tumour) at least half a radius inside the liver, and
  cut at the liver's outline (label >= 1 only);
* **contrast**: one HU difference to the liver per lesion, drawn uniformly from ``hu`` (hypodense
  to hyperdense) without the near-isodense gap ``(-min_contrast, min_contrast)`` (an invisible
  lesion labelled tumour would teach false positives), with a smooth texture of +-30 %,
  converted to each channel's image units with the window width (as
  :meth:`livseg.data.augment.Augmentation.shift_phase`); clipped to [0, 1].

Pixels where the soft mask exceeds 0.5 become tumour (label 2). The lesion is 2-D: with 2.5-D
context every context slice gets the same lesion (a short cylinder, an approximation).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["paint_lesions"]


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation (float32)."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / max(float(n.std()), 1e-6)


def _contrast(hu: tuple[float, float], gap: float, rng: np.random.Generator) -> float:
    """A HU difference drawn uniformly from ``hu`` without ``(-gap, gap)``."""
    lo, hi = hu
    neg = max(min(hi, -gap) - lo, 0.0)  # length of [lo, min(hi, -gap)]
    pos = max(hi - max(lo, gap), 0.0)  # length of [max(lo, gap), hi]
    u = rng.uniform(0.0, neg + pos)  # drawn in every case: one number per lesion
    if neg + pos == 0.0:  # a single value
        return float(lo)
    return float(lo + u if u < neg else max(lo, gap) + (u - neg))


def _lesion_alpha(
    shape: tuple[int, int], centre: tuple[int, int], radius: float, rng: np.random.Generator
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Soft mask (0-1) of one irregular elliptic lesion, in a box around ``centre``."""
    half = int(np.ceil(1.6 * radius)) + 3
    cy, cx = centre
    y0, y1 = max(cy - half, 0), min(cy + half + 1, shape[0])
    x0, x1 = max(cx - half, 0), min(cx + half + 1, shape[1])
    y = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    x = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    angle = rng.uniform(0.0, np.pi)
    ratio = rng.uniform(0.6, 1.0)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u, v = (c * y + s * x) / radius, (-s * y + c * x) / (radius * ratio)
    dist = np.sqrt(u * u + v * v)
    dist += np.float32(0.2) * _smooth_noise(dist.shape, max(radius / 2.0, 1.0), rng)
    hard = (dist < 1.0).astype(np.float32)
    alpha = ndimage.gaussian_filter(hard, rng.uniform(0.5, 1.5))
    return (slice(y0, y1), slice(x0, x1)), alpha


def paint_lesions(
    image: np.ndarray,
    label: np.ndarray,
    widths_hu: np.ndarray,
    rng: np.random.Generator,
    count: int,
    radius_px: tuple[float, float],
    hu: tuple[float, float],
    min_contrast: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``count`` synthetic lesions into the liver of one slice.

    Args:
        image: (C, H, W) image in [0, 1].
        label: (H, W) labels 0/1/2.
        widths_hu: (C,) window width in HU of every channel.
        rng: Random generator (all shapes, places and contrasts come from it).
        count: Number of lesions to try (a lesion whose radius finds no room is skipped).
        radius_px: (min, max) lesion radius in pixels (drawn log-uniformly).
        hu: (min, max) lesion minus liver in HU.
        min_contrast: Smallest absolute HU difference (the interval must leave room outside
            ``(-min_contrast, min_contrast)``).

    Returns:
        (image float32, label) as new arrays; unchanged copies when the slice has no liver.
    """
    out = image.astype(np.float32, copy=True)
    lab = label.copy()
    inside = ndimage.distance_transform_edt(label == 1)
    for _ in range(count):
        radius = float(np.exp(rng.uniform(np.log(radius_px[0]), np.log(radius_px[1]))))
        ys, xs = np.nonzero(inside >= max(0.5 * radius, 1.0))
        if ys.size == 0:
            continue
        i = int(rng.integers(ys.size))
        box, alpha = _lesion_alpha(label.shape, (int(ys[i]), int(xs[i])), radius, rng)
        alpha *= label[box] >= 1
        delta = np.float32(_contrast(hu, min_contrast, rng))
        texture = 1.0 + 0.3 * np.clip(_smooth_noise(alpha.shape, 2.0, rng), -1.0, 1.0)
        shift = alpha * texture * delta  # HU
        out[(slice(None), *box)] += shift[None] / widths_hu[:, None, None]
        lab[box][alpha > 0.5] = 2
    np.clip(out, 0.0, 1.0, out=out)
    return out, lab
