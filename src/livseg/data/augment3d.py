"""Augmentation of coarse CT volumes for the 3-D liver stage: other scanners, phases, fields of view.

One draw combines, in this order:

1. **Contrast phase**: the liver's and the lesions' intensities are shifted independently of the
   rest of the body (each by up to ``phase_hu`` HU, expressed in the window's [0, 1] units), as
   between arterial, portal-venous and late phases.
2. **Geometry**, sampled directly into the output patch with one ``grid_sample``: a patch centre
   (on a random liver voxel with probability ``foreground_prob``, else anywhere), isotropic
   scaling, rotation about the cranio-caudal axis and small tilts about the other two, and a smooth
   elastic displacement (a coarse random grid up-sampled trilinearly). Image: trilinear; label:
   nearest (values never interpolated). Outside the volume: image 0 (air), label 0.
3. **Field of view**: with probability ``truncate_prob`` the scan is cut at a random height (above
   or below the patch centre): everything past the cut becomes air, as in a scan that stops
   mid-liver. The patch itself is a random crop of the z-range (scans that reach the pelvis or the
   thorax).
4. **Image quality**: blur along z (thick slices) and in-plane, gamma, contrast, brightness, noise.

Left-right flips are never applied: the liver lies on the patient's right. Everything is
deterministic given the ``numpy.random.Generator``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

__all__ = ["Augmentation3D", "random_patch"]


@dataclass(frozen=True)
class Augmentation3D:
    """Random augmentation of a coarse (image, label) volume into a patch.

    Attributes:
        foreground_prob: Probability that the patch is centred on a random liver voxel.
        scale: (min, max) isotropic zoom (log-uniform); > 1 enlarges the anatomy.
        rotation_deg: Rotation about the z axis, uniform in +-rotation_deg degrees.
        tilt_deg: Rotation about the y and x axes, uniform in +-tilt_deg degrees each.
        elastic_prob: Probability of the elastic displacement.
        elastic_voxels: Standard deviation of the coarse displacements, in voxels.
        elastic_grid: Control points per axis of the coarse displacement grid.
        phase_hu: Maximum shift of the liver and (independently) the lesions, in HU.
        window_width_hu: Width of the HU window the image was scaled with (to convert
            ``phase_hu`` to image units).
        truncate_prob: Probability of cutting the scan at a random height inside the patch.
        blur_prob: Probability of a Gaussian blur.
        blur_sigma_z: Maximum blur along z, in voxels (thick slices).
        blur_sigma_xy: Maximum in-plane blur, in voxels.
        intensity_prob: Probability of the gamma / contrast / brightness jitter.
        gamma: (min, max) exponent (log-uniform).
        contrast: (min, max) factor around the patch mean.
        brightness: Additive shift in +-brightness.
        noise_std: Maximum standard deviation of Gaussian noise.
    """

    foreground_prob: float = 0.7
    scale: tuple[float, float] = (0.8, 1.25)
    rotation_deg: float = 15.0
    tilt_deg: float = 5.0
    elastic_prob: float = 0.3
    elastic_voxels: float = 1.5
    elastic_grid: int = 4
    phase_hu: float = 40.0
    window_width_hu: float = 600.0
    truncate_prob: float = 0.2
    blur_prob: float = 0.3
    blur_sigma_z: float = 1.0
    blur_sigma_xy: float = 0.7
    intensity_prob: float = 0.8
    gamma: tuple[float, float] = (0.7, 1.5)
    contrast: tuple[float, float] = (0.75, 1.25)
    brightness: float = 0.1
    noise_std: float = 0.05

    def __post_init__(self) -> None:
        for name in (
            "foreground_prob",
            "elastic_prob",
            "truncate_prob",
            "blur_prob",
            "intensity_prob",
        ):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        for name in ("scale", "gamma"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be (min, max) with 0 < min <= max")
        if not 0 <= self.contrast[0] <= self.contrast[1]:
            raise ValueError("contrast must be (min, max) with 0 <= min <= max")
        if self.elastic_grid < 2 or self.window_width_hu <= 0:
            raise ValueError("elastic_grid must be >= 2 and window_width_hu > 0")

    # --- 1. contrast phase --------------------------------------------------------------------
    def shift_phase(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Shift liver (label >= 1) and lesion (label == 2) intensities independently."""
        d_liver, d_lesion = rng.uniform(-1.0, 1.0, size=2) * self.phase_hu / self.window_width_hu
        if self.phase_hu <= 0:
            return image
        out = image.astype(np.float32, copy=True)
        out[label >= 1] += np.float32(d_liver)
        out[label == 2] += np.float32(d_lesion)
        return np.clip(out, 0.0, 1.0, out=out)

    # --- 2. geometry --------------------------------------------------------------------------
    def sample_points(
        self,
        shape: tuple[int, int, int],
        patch: tuple[int, int, int],
        label: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Source coordinates (3, *patch) of every patch voxel, and the patch centre (3,)."""
        centre = self._centre(shape, label, rng)
        zoom = np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1])))
        angles = np.deg2rad(
            [
                rng.uniform(-self.rotation_deg, self.rotation_deg),
                rng.uniform(-self.tilt_deg, self.tilt_deg),
                rng.uniform(-self.tilt_deg, self.tilt_deg),
            ]
        )
        matrix = _rotation(*angles) / zoom  # output offset -> source offset
        offsets = np.stack(
            np.meshgrid(
                *[np.arange(n, dtype=np.float32) - (n - 1) / 2 for n in patch], indexing="ij"
            )
        )
        points = np.einsum("ij,j...->i...", matrix.astype(np.float32), offsets)
        points += centre.reshape(3, 1, 1, 1).astype(np.float32)
        if rng.random() < self.elastic_prob and self.elastic_voxels > 0:
            g = self.elastic_grid
            coarse = rng.normal(0.0, self.elastic_voxels, size=(3, g, g, g)).astype(np.float32)
            points += _upsample_field(coarse, patch)
        return points, centre

    def _centre(
        self, shape: tuple[int, int, int], label: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        use_fg = rng.random() < self.foreground_prob
        uniform = rng.uniform(0.0, 1.0, size=3) * (np.asarray(shape) - 1)
        if not use_fg:
            return uniform
        fg = np.flatnonzero(label.reshape(-1) >= 1)
        if fg.size == 0:
            return uniform
        k = fg[int(rng.integers(fg.size))]
        return np.asarray(np.unravel_index(k, shape), dtype=np.float64)

    # --- 3. field of view ---------------------------------------------------------------------
    def truncate(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """With ``truncate_prob``: air beyond a random axial cut (above or below)."""
        do = rng.random() < self.truncate_prob
        cut = int(rng.integers(1, max(image.shape[0], 2)))
        above = rng.random() < 0.5
        if not do:
            return image, label
        part = slice(cut, None) if above else slice(None, cut)
        image[part] = 0.0
        label[part] = 0
        return image, label

    # --- 4. image quality ---------------------------------------------------------------------
    def degrade(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Blur, gamma, contrast, brightness and noise on a [0, 1] patch; clipped to [0, 1]."""
        do_blur = rng.random() < self.blur_prob
        sz, sxy = rng.uniform(0, self.blur_sigma_z), rng.uniform(0, self.blur_sigma_xy)
        do_int = rng.random() < self.intensity_prob
        gamma = np.exp(rng.uniform(np.log(self.gamma[0]), np.log(self.gamma[1])))
        contrast = rng.uniform(*self.contrast)
        brightness = rng.uniform(-self.brightness, self.brightness)
        sigma = rng.uniform(0.0, self.noise_std)
        noise_seed = int(rng.integers(2**31))
        x = image
        if do_blur:
            x = ndimage.gaussian_filter(x, (sz, sxy, sxy), mode="nearest").astype(np.float32)
        if do_int:
            x = np.clip(x, 0.0, 1.0) ** np.float32(gamma)
            mean = np.float32(x.mean())
            x = (x - mean) * np.float32(contrast) + mean + np.float32(brightness)
            if sigma > 0:
                noise = np.random.default_rng(noise_seed).standard_normal(x.shape, np.float32)
                x = x + np.float32(sigma) * noise
        return np.clip(x, 0.0, 1.0).astype(np.float32, copy=False)

    def __call__(
        self,
        image: np.ndarray,
        label: np.ndarray,
        patch: tuple[int, int, int],
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw one augmented patch.

        Args:
            image: (D, H, W) float image in [0, 1] (the coarse grid).
            label: (D, H, W) uint8 labels 0/1/2.
            patch: Output (d, h, w) in voxels.
            rng: Random generator; the same state gives the same patch.

        Returns:
            (image float32 patch in [0, 1], label uint8 patch).
        """
        image = self.shift_phase(image, label, rng)
        points, _ = self.sample_points(image.shape, patch, label, rng)
        img, lab = sample_patch(image, label, points)
        img, lab = self.truncate(img, lab, rng)
        return self.degrade(img, rng), lab


def random_patch(
    image: np.ndarray,
    label: np.ndarray,
    patch: tuple[int, int, int],
    rng: np.random.Generator,
    foreground_prob: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """An un-augmented random crop (zero-padded where the volume is smaller than the patch)."""
    aug = Augmentation3D(
        foreground_prob=foreground_prob,
        scale=(1.0, 1.0),
        rotation_deg=0.0,
        tilt_deg=0.0,
        elastic_prob=0.0,
        phase_hu=0.0,
        truncate_prob=0.0,
        blur_prob=0.0,
        intensity_prob=0.0,
    )
    points, _ = aug.sample_points(image.shape, patch, label, rng)
    return sample_patch(image, label, np.round(points))


def _rotation(rz: float, ry: float, rx: float) -> np.ndarray:
    """3x3 rotation acting on (z, y, x) offsets: about z (in-plane), then y, then x."""
    cz, sz = np.cos(rz), np.sin(rz)
    cy, sy = np.cos(ry), np.sin(ry)
    cx, sx = np.cos(rx), np.sin(rx)
    about_z = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_x = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])
    return about_x @ about_y @ about_z


def _upsample_field(coarse: np.ndarray, patch: tuple[int, int, int]) -> np.ndarray:
    """Trilinear up-sampling of a (3, g, g, g) displacement grid to (3, *patch)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(coarse)[None]
    out = F.interpolate(t, size=patch, mode="trilinear", align_corners=True)[0]
    return out.numpy()


def sample_patch(
    image: np.ndarray, label: np.ndarray, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sample image (trilinear) and label (nearest) at source coordinates (3, d, h, w).

    Outside the volume the image is 0 and the label 0.
    """
    import torch
    import torch.nn.functional as F

    shape = image.shape
    grid = np.empty((1, *points.shape[1:], 3), dtype=np.float32)
    for axis, k in ((0, 2), (1, 1), (2, 0)):  # grid_sample wants (x, y, z) in [-1, 1]
        grid[0, ..., k] = points[axis] * np.float32(2.0 / max(shape[axis] - 1, 1)) - 1.0
    g = torch.from_numpy(grid)
    with torch.no_grad():
        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        out_img = F.grid_sample(img, g, mode="bilinear", padding_mode="zeros", align_corners=True)
        lab = torch.from_numpy(np.asarray(label, dtype=np.float32))[None, None]
        out_lab = F.grid_sample(lab, g, mode="nearest", padding_mode="zeros", align_corners=True)
    return out_img[0, 0].numpy(), out_lab[0, 0].numpy().astype(np.uint8)
