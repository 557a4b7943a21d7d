"""The one volume container of livseg: a voxel array with its physical geometry.

Arrays are indexed ``(z, y, x)`` (slowest to fastest). **All geometry is stored in the same
reversed order**, i.e. SimpleITK's geometry with every axis list reversed:

* ``spacing = (sz, sy, sx)`` in mm;
* ``origin = (oz, oy, ox)``: the DICOM patient (LPS) position of voxel (0, 0, 0) written as
  (S, P, L) components;
* ``direction``: 3x3; column ``a`` is the unit vector of array axis ``a`` (0 = z, 1 = y, 2 = x)
  written in the same reversed (S, P, L) component order. ``direction == sitk_dir[::-1, ::-1]``.

So the physical LPS position (x, y, z) of voxel index (k, j, i) is, by :meth:`Volume.index_to_lps`,
``(origin + direction @ (spacing * (k, j, i)))[::-1]``.

Images hold float32 Hounsfield units; labels hold uint8 {0 background, 1 liver, 2 tumour}.
The two are told apart by ``kind`` so that labels are never interpolated.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

Kind = Literal["image", "label"]


def _checked_array(array, kind: str) -> np.ndarray:
    """The voxels as a 3-D array of the kind's dtype: float32 for images, uint8 for labels.

    Raises:
        ValueError: not 3-D, an unknown kind, or label values outside 0..255.
    """
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise ValueError(f"Volume array must be 3-D (z, y, x), got shape {arr.shape}")
    if kind not in ("image", "label"):
        raise ValueError(f"kind must be 'image' or 'label', got {kind!r}")
    dtype = np.float32 if kind == "image" else np.uint8
    if arr.dtype == dtype:
        return arr
    if kind == "label" and arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError("label values must lie in 0..255")
    return arr.astype(dtype)


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D voxel array with geometry.

    Attributes:
        array: (Z, Y, X) voxels; float32 HU for images, uint8 labels for labels.
        spacing: (sz, sy, sx) voxel size in mm.
        origin: (oz, oy, ox) LPS position in mm of voxel (0, 0, 0): component order matches
            the array axes' *patient* order reversed, i.e. origin = (z_lps, y_lps, x_lps).
        direction: 3x3 matrix; ``direction[:, a]`` is the LPS unit vector, written in
            (z, y, x) patient order, of array axis ``a`` (a = 0 for z, 1 for y, 2 for x).
        kind: "image" or "label".
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    kind: Kind = "image"

    def __post_init__(self) -> None:
        arr = _checked_array(self.array, self.kind)
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise ValueError(f"spacing must be three positive numbers, got {self.spacing}")
        origin = tuple(float(o) for o in self.origin)
        if len(origin) != 3:
            raise ValueError(f"origin must have three values, got {self.origin}")
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        object.__setattr__(self, "array", arr)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def image(cls, array: np.ndarray, spacing, origin=(0.0, 0.0, 0.0), direction=None) -> Volume:
        """An image volume (float32 HU)."""
        return cls(
            np.asarray(array, dtype=np.float32),
            spacing,
            origin,
            np.eye(3) if direction is None else direction,
            "image",
        )

    @classmethod
    def label(cls, array: np.ndarray, spacing, origin=(0.0, 0.0, 0.0), direction=None) -> Volume:
        """A label volume (uint8: 0 background, 1 liver, 2 tumour)."""
        return cls(
            np.asarray(array),
            spacing,
            origin,
            np.eye(3) if direction is None else direction,
            "label",
        )

    def with_array(self, array: np.ndarray, kind: Kind | None = None) -> Volume:
        """Same geometry, new voxels (shape must match)."""
        array = np.asarray(array)
        if array.shape != self.shape:
            raise ValueError(f"array shape {array.shape} differs from volume shape {self.shape}")
        return replace(self, array=array, kind=kind or self.kind)

    # --- geometry -----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def is_label(self) -> bool:
        return self.kind == "label"

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (1 ml = 1000 mm^3)."""
        return float(np.prod(self.spacing)) / 1000.0

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous array index (k, j, i, 1) to LPS (z, y, x, 1) in mm.

        Both sides are in (z, y, x) order, matching ``spacing``/``origin``/``direction``.
        """
        aff = np.eye(4)
        aff[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        aff[:3, 3] = self.origin
        return aff

    def index_to_lps(self, index) -> np.ndarray:
        """LPS position(s), in (x, y, z) patient order (mm), of array index(es) (k, j, i)."""
        idx = np.atleast_2d(np.asarray(index, dtype=np.float64))
        zyx = idx @ (self.direction * np.asarray(self.spacing)[None, :]).T + np.asarray(self.origin)
        out = zyx[:, ::-1]
        return out[0] if np.ndim(index) == 1 else out

    def same_geometry(self, other: Volume, atol: float = 1e-4) -> bool:
        """True when shape, spacing, origin and direction agree (tolerance in mm / cosines)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    def geometry_mismatch(self, other: Volume, atol: float = 1e-4) -> str | None:
        """A sentence describing the first geometry difference, or None when equal."""
        if self.shape != other.shape:
            return f"shape {self.shape} != {other.shape}"
        if not np.allclose(self.spacing, other.spacing, atol=atol):
            return f"spacing {self.spacing} != {other.spacing}"
        if not np.allclose(self.origin, other.origin, atol=atol):
            return f"origin {self.origin} != {other.origin}"
        if not np.allclose(self.direction, other.direction, atol=atol):
            return "direction matrices differ"
        return None

    def orientation_codes(self) -> str:
        """Where the array's x, y, z axes point, as in nibabel's ``aff2axcodes``.

        Returns three letters for array axes in (x, y, z) order, e.g. "LPS" (identity direction)
        or "RAS" (as a typical NIfTI from a RAS affine).
        """
        letters_lps = (("L", "R"), ("P", "A"), ("S", "I"))  # + and - along LPS x, y, z
        codes = []
        for axis in (2, 1, 0):  # array x, y, z
            vec_zyx = self.direction[:, axis]
            vec_xyz = vec_zyx[::-1]
            dim = int(np.argmax(np.abs(vec_xyz)))
            codes.append(letters_lps[dim][0 if vec_xyz[dim] > 0 else 1])
        return "".join(codes)

    def __repr__(self) -> str:
        return (
            f"Volume(kind={self.kind!r}, shape={self.shape}, spacing={self.spacing}, "
            f"origin={self.origin}, orientation={self.orientation_codes()})"
        )
