"""Data augmentation for axial CT slices, applied in DataLoader workers.

One random **geometric** transform (rotation, isotropic scaling, translation, optional left-right
flip, and a smooth elastic deformation) is composed into a single sampling grid and applied with
``torch.nn.functional.grid_sample`` to the image (bilinear, every channel), the label (nearest:
label values are never interpolated) and the weight map (bilinear). Then an **intensity** jitter
(gamma, contrast, brightness, Gaussian noise) acts on the normalised image only, which is clipped
back to [0, 1]. With ``phase_hu`` > 0 a **contrast-phase** shift comes first: the liver
(label >= 1) and, independently, the lesions (label == 2) are brightened or darkened by up to
``phase_hu`` HU, converted to each channel's image units with its window width, as between
arterial, portal-venous and late phases (the 2-D twin of
:meth:`livseg.data.augment3d.Augmentation3D.shift_phase`). For histogram-equalised inputs the
conversion is approximate (the equalisation is not linear). With ``synth_prob`` > 0, before the
phase shift, a slice with liver gets 1 to ``synth_count`` **synthetic lesions**
(:mod:`livseg.data.synth`) with probability ``synth_prob``.

Left-right flips are off by default: the liver lies on the patient's right, and a flipped abdomen
is not a plausible CT. Everything is deterministic given the ``numpy.random.Generator``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from livseg.data.synth import paint_lesions

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=16)
def _upsampling_matrix(n: int, g: int) -> np.ndarray:
    """(n, g) matrix M such that ``M @ v`` is the cubic-spline zoom of a length-g vector to n.

    ``scipy.ndimage.zoom`` is linear and separable, so the 2-D zoom of a coarse (g, g) field is
    ``M_h @ field @ M_w.T``; precomputing the matrices makes it a pair of tiny matmuls.
    """
    eye = np.eye(g)
    cols = [
        ndimage.zoom(eye[j], n / g, order=3, mode="nearest", grid_mode=True)[:n] for j in range(g)
    ]
    return np.stack(cols, axis=1)


@dataclass(frozen=True)
class Augmentation:
    """Random augmentation of an (image, label, weight) slice triple.

    Attributes:
        spatial_prob: Probability of applying the affine part (rotation/scale/translation).
        rotation_deg: Rotation drawn uniformly in [-rotation_deg, +rotation_deg] degrees.
        scale: (min, max) isotropic zoom factor (> 1 enlarges the anatomy).
        translation: Shift drawn uniformly in +-translation x image size, per axis.
        elastic_prob: Probability of the elastic deformation.
        elastic_magnitude: Standard deviation of the coarse displacements, as a fraction of the
            image size (0.02 = 5 px at 256 x 256).
        elastic_grid: Control points per side of the coarse displacement grid (the field is
            upsampled from it with cubic splines, hence smooth).
        flip_lr: Allow left-right flips (probability 0.5); off by default for CT.
        intensity_prob: Probability of the intensity jitter.
        brightness: Additive shift drawn in +-brightness (image units, images are in [0, 1]).
        contrast: (min, max) factor applied around the slice mean.
        gamma: (min, max) exponent of a gamma curve on the [0, 1] image (log-uniform).
        noise_std: Maximum standard deviation of additive Gaussian noise (drawn in [0, noise_std]).
        phase_prob: Probability of the contrast-phase shift.
        phase_hu: Maximum shift of the liver and (independently) the lesions, in HU; 0 (the
            default) turns it off and draws no random numbers for it.
        window_widths_hu: Width in HU of each window (one value: every channel), to convert
            ``phase_hu`` and ``synth_hu`` to image units; with 2.5-D context they repeat for
            every context slice.
        synth_prob: Probability of painting synthetic lesions into a slice that has liver; 0
            (the default) turns it off and draws no random numbers for it.
        synth_count: Most lesions per painted slice (1 to this many).
        synth_radius_px: (min, max) radius of a synthetic lesion in pixels.
        synth_hu: (min, max) HU difference of a synthetic lesion to the liver.
        synth_min_contrast_hu: Smallest absolute HU difference of a synthetic lesion (no
            invisible lesions labelled tumour).
    """

    spatial_prob: float = 0.9
    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    translation: float = 0.05
    elastic_prob: float = 0.5
    elastic_magnitude: float = 0.02
    elastic_grid: int = 5
    flip_lr: bool = False
    intensity_prob: float = 0.8
    brightness: float = 0.1
    contrast: tuple[float, float] = (0.85, 1.15)
    gamma: tuple[float, float] = (0.8, 1.25)
    noise_std: float = 0.02
    phase_prob: float = 0.5
    phase_hu: float = 0.0
    window_widths_hu: tuple[float, ...] = (450.0,)
    synth_prob: float = 0.0
    synth_count: int = 3
    synth_radius_px: tuple[float, float] = (3.0, 24.0)
    synth_hu: tuple[float, float] = (-80.0, 40.0)
    synth_min_contrast_hu: float = 15.0

    def __post_init__(self) -> None:
        if self.phase_hu < 0 or not self.window_widths_hu or min(self.window_widths_hu) <= 0:
            raise ValueError("phase_hu must be >= 0 and every window width > 0")
        if self.synth_count < 1 or not 0 < self.synth_radius_px[0] <= self.synth_radius_px[1]:
            raise ValueError("synth_count must be >= 1 and synth_radius_px (min, max) > 0")
        g, (lo, hi) = self.synth_min_contrast_hu, self.synth_hu
        if lo > hi or g < 0 or (lo > -g and hi < g):
            raise ValueError(
                f"synth_hu must be (min, max) reaching beyond +-synth_min_contrast_hu, got "
                f"{self.synth_hu} and {g}"
            )
        for name in ("spatial_prob", "elastic_prob", "intensity_prob", "phase_prob", "synth_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {self.scale}")
        if not 0 < self.gamma[0] <= self.gamma[1]:
            raise ValueError(f"gamma must be (min, max) with 0 < min <= max, got {self.gamma}")
        if self.contrast[0] > self.contrast[1] or self.contrast[0] < 0:
            raise ValueError(f"contrast must be (min, max), 0 <= min <= max, got {self.contrast}")
        if self.elastic_grid < 2:
            raise ValueError(f"elastic_grid must be >= 2, got {self.elastic_grid}")
        if (
            min(
                self.rotation_deg,
                self.translation,
                self.elastic_magnitude,
                self.brightness,
                self.noise_std,
            )
            < 0
        ):
            raise ValueError(
                "rotation, translation, elastic magnitude, brightness and noise must be >= 0"
            )

    # --- geometry ---------------------------------------------------------------------------
    def sample_grid(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray | None:
        """Draw one geometric transform as a sampling grid.

        Args:
            shape: (H, W) of the slice.
            rng: Random generator (consumed in a fixed order).

        Returns:
            (2, H, W) float32 source coordinates (row, column) for every output pixel, or None
            when the drawn transform is the identity.
        """
        h, w = shape
        do_affine = rng.random() < self.spatial_prob
        angle = np.deg2rad(rng.uniform(-self.rotation_deg, self.rotation_deg))
        zoom = np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1])))
        shift = rng.uniform(-self.translation, self.translation, size=2) * np.array([h, w])
        do_flip = self.flip_lr and rng.random() < 0.5
        do_elastic = rng.random() < self.elastic_prob and self.elastic_magnitude > 0
        g = self.elastic_grid
        coarse = rng.normal(0.0, self.elastic_magnitude * max(h, w), size=(2, g, g))
        if not (do_affine or do_flip or do_elastic):
            return None
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        y = (np.arange(h, dtype=np.float32) - np.float32(cy))[:, None]  # (H, 1)
        x = (np.arange(w, dtype=np.float32) - np.float32(cx))[None, :]  # (1, W)
        if do_affine:
            # output -> source: inverse rotation and inverse zoom, then shift
            c, s = np.float32(np.cos(angle) / zoom), np.float32(np.sin(angle) / zoom)
            y, x = (c * y - s * x + np.float32(shift[0]), s * y + c * x + np.float32(shift[1]))
        if do_flip:
            x = -x
        src = np.empty((2, h, w), dtype=np.float32)
        src[0] = y + np.float32(cy)
        src[1] = x + np.float32(cx)
        if do_elastic:
            # smooth field: cubic-spline upsampling of the coarse grid, as two small matrices
            ry, rx = _upsampling_matrix(h, g), _upsampling_matrix(w, g)
            for a in range(2):
                src[a] += (ry @ coarse[a] @ rx.T).astype(np.float32)
        return src.astype(np.float32)

    # --- application ------------------------------------------------------------------------
    def apply_grid(
        self,
        grid: np.ndarray | None,
        image: np.ndarray,
        label: np.ndarray | None = None,
        weight: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Resample (image, label, weight) on a grid from :meth:`sample_grid`.

        Outside the slice, the image is 0 (the normalised minimum, air), the label 0 and the
        weight the nearest edge value.
        """
        if grid is None:
            return image, label, weight
        import torch
        import torch.nn.functional as F

        h, w = grid.shape[1:]
        # grid_sample wants (x, y) in [-1, 1] with align_corners=True: -1 / +1 = first / last pixel
        norm = np.empty((1, h, w, 2), dtype=np.float32)
        norm[0, ..., 0] = grid[1] * np.float32(2.0 / max(w - 1, 1)) - 1.0
        norm[0, ..., 1] = grid[0] * np.float32(2.0 / max(h - 1, 1)) - 1.0
        tgrid = torch.from_numpy(norm)
        with torch.no_grad():
            img_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
            out_img = F.grid_sample(
                img_t, tgrid, mode="bilinear", padding_mode="zeros", align_corners=True
            )[0].numpy()
            out_lab = None
            if label is not None:
                # nearest neighbour picks existing label values (exact in float32)
                lab_t = torch.from_numpy(np.asarray(label, dtype=np.float32))[None, None]
                out_lab = F.grid_sample(
                    lab_t, tgrid, mode="nearest", padding_mode="zeros", align_corners=True
                )[0, 0].numpy()
                out_lab = out_lab.astype(np.asarray(label).dtype)
            out_w = None
            if weight is not None:
                w_t = torch.from_numpy(np.asarray(weight, dtype=np.float32))[None, None]
                out_w = F.grid_sample(
                    w_t, tgrid, mode="bilinear", padding_mode="border", align_corners=True
                )[0, 0].numpy()
        return out_img, out_lab, out_w

    def shift_phase(
        self, image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator
    ) -> np.ndarray:
        """Shift liver (label >= 1) and lesion (label == 2) intensities independently (C, H, W)."""
        if self.phase_hu <= 0 or label is None:
            return image
        do = rng.random() < self.phase_prob
        d_liver, d_lesion = rng.uniform(-1.0, 1.0, size=2) * self.phase_hu
        if not do:
            return image
        widths = self._channel_widths(image.shape[0])
        out = image.astype(np.float32, copy=True)
        for mask, delta in ((label >= 1, d_liver), (label == 2, d_lesion)):
            if mask.any():
                out[:, mask] += (np.float32(delta) / widths)[:, None]
        return np.clip(out, 0.0, 1.0, out=out)

    def add_lesions(
        self, image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Paint synthetic lesions into the liver (see :mod:`livseg.data.synth`)."""
        if self.synth_prob <= 0 or label is None:
            return image, label
        do = rng.random() < self.synth_prob
        count = int(rng.integers(1, self.synth_count + 1))
        seed = int(rng.integers(2**31))
        if not do or not (label == 1).any():
            return image, label
        widths = self._channel_widths(image.shape[0])
        return paint_lesions(
            image,
            label,
            widths,
            np.random.default_rng(seed),
            count,
            self.synth_radius_px,
            self.synth_hu,
            self.synth_min_contrast_hu,
        )

    def _channel_widths(self, channels: int) -> np.ndarray:
        """Window width of every channel: ``window_widths_hu`` repeated per 2.5-D context slice
        (channels are offset-major: every context slice carries all windows, in order)."""
        w = np.asarray(self.window_widths_hu, np.float32)
        if channels % w.size:
            raise ValueError(
                f"{w.size} window widths do not divide the image's {channels} channels"
            )
        return np.tile(w, channels // w.size)

    def jitter_intensity(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Gamma, contrast, brightness and noise on a [0, 1] image (C, H, W); clipped to [0, 1]."""
        do = rng.random() < self.intensity_prob
        gamma = np.exp(rng.uniform(np.log(self.gamma[0]), np.log(self.gamma[1])))
        contrast = rng.uniform(*self.contrast)
        brightness = rng.uniform(-self.brightness, self.brightness)
        sigma = rng.uniform(0.0, self.noise_std)
        noise_seed = int(rng.integers(2**31))
        if not do:
            return image
        x = np.clip(image.astype(np.float32, copy=True), 0.0, 1.0)
        x **= np.float32(gamma)
        mean = x.mean(axis=(-2, -1), keepdims=True)
        x = (x - mean) * np.float32(contrast) + mean + np.float32(brightness)
        if sigma > 0:
            noise = np.random.default_rng(noise_seed).standard_normal(x.shape, dtype=np.float32)
            x += np.float32(sigma) * noise
        return np.clip(x, 0.0, 1.0, out=x)

    def __call__(
        self,
        image: np.ndarray,
        label: np.ndarray | None,
        weight: np.ndarray | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Augment one slice triple.

        Args:
            image: (C, H, W) float image in [0, 1] (every channel gets the same geometry).
            label: (H, W) integer labels, or None.
            weight: (H, W) float weight map, or None.
            rng: Random generator; the same state gives the same result.

        Returns:
            (image float32 (C, H, W) in [0, 1], label (H, W) same dtype, weight float32 (H, W));
            None stays None.
        """
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
        grid = self.sample_grid(image.shape[-2:], rng)
        image, label, weight = self.apply_grid(grid, image, label, weight)
        image, label = self.add_lesions(image, label, rng)
        image = self.shift_phase(image, label, rng)
        image = self.jitter_intensity(image, rng)
        return image.astype(np.float32, copy=False), label, weight
