"""A synthetic, contrast-enhanced abdominal CT phantom with liver and liver-tumour labels.

The phantom is built in physical millimetres, so the same seed gives the same anatomy at every
matrix size (``size`` only changes the sampling and the pixel noise). Geometry follows
:class:`livseg.volume.Volume`: arrays are ``(z, y, x)`` with the identity direction in LPS, i.e.

* x (last axis) points to the patient's **left**: the patient's right (liver) is at low x;
* y points **posterior**: the anterior abdominal wall is at low y, the spine at high y;
* z points **superior**: slice 0 is the most inferior one, the liver dome is near the top.

Displayed with ``imshow(image.array[k])`` a slice appears in the radiological convention
(patient right on the image left, anterior at the top).

Tissues and typical portal-venous-phase values (HU, before noise): air -1000, subcutaneous and
intra-abdominal fat about -100, muscle 40-60, liver 100-130 with brighter portal and hepatic
veins, spleen and kidneys with liver-like values (confounders), stomach and bowel with fluid and
gas, aorta/IVC, gallbladder (fluid), pancreas, vertebrae and ribs (cortex 600-1000, cancellous
150-300), lung bases above the diaphragm, the inferior heart and a CT table. Tumours (0 to 4 per
case) are hypo-dense (30-60 HU, large ones possibly necrotic) or hyper-dense (150-200 HU),
radius 3-30 mm, lobulated, and always inside the liver.

Labels: 0 background, 1 liver, 2 tumour (tumour voxels lie inside the liver; intra-hepatic
vessels are liver, the IVC and the gallbladder are not).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from livseg import LABEL_LIVER, LABEL_TUMOUR, __version__
from livseg.errors import LivsegError, OutputExistsError
from livseg.io.atomic import check_writable, write_text_atomic
from livseg.volume import Volume

log = logging.getLogger("livseg.phantom")

#: Craniocaudal extent (mm) covered by the default number of slices.
COVERAGE_MM = 240.0
#: Nominal in-plane field of view (mm); each case varies it by a few per cent.
FOV_MM = 350.0
#: Smallest accepted matrix size.
MIN_SIZE = 32
#: Air, the lowest stored value (HU).
AIR_HU = -1000.0
_HU_MIN, _HU_MAX = -1024.0, 3071.0


# ---------------------------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------------------------


def case_seed(seed: int, case_index: int) -> int:
    """The seed of case ``case_index`` of a dataset generated with ``seed``.

    Args:
        seed: dataset seed (non-negative int).
        case_index: case number N (>= 0).

    Returns:
        A 32-bit seed derived from ``(seed, case_index)`` with :class:`numpy.random.SeedSequence`,
        so ``make_phantom(case_seed(seed, n))`` reproduces case N of the dataset.
    """
    state = np.random.SeedSequence([int(seed), int(case_index)]).generate_state(1, np.uint32)
    return int(state[0])


# ---------------------------------------------------------------------------------------------
# Sampling grid and smooth random fields (everything in mm, body-centred)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """Voxel-centre coordinates (mm) along each axis, relative to the body centre.

    ``z`` is height above the lowest slice (superior +), ``y`` posterior +, ``x`` patient-left +.
    All three are ascending.
    """

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray

    def __post_init__(self) -> None:
        for name in ("z", "y", "x"):  # float32 keeps every full-volume computation in float32
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float32))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z.size, self.y.size, self.x.size)

    def box(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Index box of the voxels whose centres lie in [lo, hi] (z, y, x mm); None if empty."""
        out = []
        for coords, a, b in zip((self.z, self.y, self.x), lo, hi, strict=True):
            i0 = int(np.searchsorted(coords, a, side="left"))
            i1 = int(np.searchsorted(coords, b, side="right"))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (nz,1,1), (1,ny,1), (1,1,nx) coordinates of a box (mm)."""
        return (
            self.z[box[0]][:, None, None],
            self.y[box[1]][None, :, None],
            self.x[box[2]][None, None, :],
        )


class _SmoothField:
    """A smooth random scalar field: Gaussian radial basis functions on a coarse node lattice.

    The field's standard deviation is about ``amplitude``; its correlation length is ``step_mm``.

    Evaluated separably on grids, so a full 256x256x64 field costs a few tensor contractions.
    The field depends only on physical coordinates, never on the sampling.
    """

    def __init__(self, rng: np.random.Generator, lo, hi, step_mm: float, amplitude: float):
        self.nodes = [
            np.arange(a - step_mm, b + 2 * step_mm, step_mm) for a, b in zip(lo, hi, strict=True)
        ]
        # Unit-variance normalisation: per axis, sum_k exp(-(x-k)^2) ~ sqrt(pi).
        norm = np.pi**-0.75
        coef = rng.standard_normal(tuple(n.size for n in self.nodes)) * (amplitude * norm)
        self.coef = coef.astype(np.float32)
        self.step = float(step_mm)

    def _weights(self, coords: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, slice]:
        """Kernel weights (n, k) of the nodes within 4 steps of the coordinates, and their slice."""
        c = np.asarray(coords, dtype=np.float64).reshape(-1)
        lo = int(np.searchsorted(nodes, c.min() - 4 * self.step))
        hi = int(np.searchsorted(nodes, c.max() + 4 * self.step, side="right"))
        d = (c[:, None] - nodes[None, lo:hi]) / self.step
        return np.exp(-0.5 * d * d).astype(np.float32), slice(lo, hi)

    def sample(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Field on the grid spanned by 1-D coordinate vectors (mm); shape (nz, ny, nx) float32."""
        (wz, sz), (wy, sy), (wx, sx) = (
            self._weights(c, n) for c, n in zip((z, y, x), self.nodes, strict=True)
        )
        coef = self.coef[sz, sy, sx]
        if coef.size == 0:
            return np.zeros((wz.shape[0], wy.shape[0], wx.shape[0]), np.float32)
        # Plain einsum (no BLAS threads): fast for these small factors, even on busy machines.
        f = np.einsum("ijk,xk->ijx", coef, wx)  # (cz, cy, nx)
        f = np.einsum("yj,ijx->iyx", wy, f)  # (cz, ny, nx)
        f = np.einsum("zi,iyx->zyx", wz, f)  # (nz, ny, nx)
        return np.ascontiguousarray(f, dtype=np.float32)

    def sample_box(self, grid: _Grid, box) -> np.ndarray:
        return self.sample(grid.z[box[0]], grid.y[box[1]], grid.x[box[2]])


def _rotation(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """3x3 rotation (z, y, x component order): yaw in-plane, pitch about y, roll about x (rad)."""
    cz, sz = np.cos(yaw), np.sin(yaw)
    cy, sy = np.cos(pitch), np.sin(pitch)
    cx, sx = np.cos(roll), np.sin(roll)
    # Matrices act on (z, y, x) vectors.
    r_yaw = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])  # rotates y-x plane
    r_pitch = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])  # rotates z-x plane
    r_roll = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])  # rotates z-y plane
    return r_yaw @ r_pitch @ r_roll


@dataclass
class _Ellipsoid:
    """An ellipsoid: centre (z, y, x) mm, semi-axes (mm) along its own axes, rotation."""

    centre: np.ndarray
    axes: np.ndarray
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))

    def bounds(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        half = np.abs(self.rot) @ self.axes * 1.3 + margin
        return self.centre - half, self.centre + half

    def radius(self, z, y, x) -> np.ndarray:
        """Normalised radius q (1 on the surface) at broadcastable coordinates."""
        c = [float(v) for v in self.centre]
        dz, dy, dx = z - c[0], y - c[1], x - c[2]
        q2 = None
        for a in range(3):  # local coordinate a = rot[:, a] . d, scaled by the semi-axis
            w = [float(v) / float(self.axes[a]) for v in self.rot[:, a]]
            local = w[0] * dz + w[1] * dy + w[2] * dx
            q2 = local * local if q2 is None else q2 + local * local
        return np.sqrt(q2)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth minimum (polynomial), blending width k."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _segment_distance(z, y, x, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) from points to segment a-b and the position t in [0, 1] along it."""
    a0, a1, a2 = (float(v) for v in a)
    b0, b1, b2 = (float(v) - w for v, w in zip(b, (a0, a1, a2), strict=True))
    denom = (b0 * b0 + b1 * b1 + b2 * b2) or 1e-9
    t = (z - a0) * (b0 / denom) + (y - a1) * (b1 / denom) + (x - a2) * (b2 / denom)
    t = np.clip(t, 0.0, 1.0)
    dz = z - (a0 + t * b0)
    dy = y - (a1 + t * b1)
    dx = x - (a2 + t * b2)
    return np.sqrt(dz * dz + dy * dy + dx * dx), t


@dataclass
class _Tube:
    """A tube along a polyline: points (n, 3) mm (z, y, x), radius (mm) at each point."""

    points: np.ndarray
    radii: np.ndarray

    def segments(self) -> Iterator[tuple[np.ndarray, np.ndarray, float, float]]:
        for i in range(len(self.points) - 1):
            yield self.points[i], self.points[i + 1], float(self.radii[i]), float(self.radii[i + 1])


def _tube_pieces(grid: _Grid, tube: _Tube, pad: float = 0.0):
    """Yield (box, distance, radius) per segment of a tube: distance (mm) of each box voxel to
    the segment and the segment's (linearly tapering) radius at the closest point."""
    for a, b, ra, rb in tube.segments():
        rmax = max(ra, rb) + pad
        box = grid.box(np.minimum(a, b) - rmax, np.maximum(a, b) + rmax)
        if box is None:
            continue
        z, y, x = grid.coords(box)
        d, t = _segment_distance(z, y, x, a, b)
        yield box, d, ra + (rb - ra) * t


# ---------------------------------------------------------------------------------------------
# Anatomy: every random draw that defines the patient (independent of the matrix size)
# ---------------------------------------------------------------------------------------------


@dataclass
class _Tumour:
    centre: np.ndarray  # (z, y, x) mm, grid frame
    axes: np.ndarray  # mm
    rot: np.ndarray
    kind: str  # "hypo" | "hyper"
    hu: float
    core_hu: float | None  # necrotic core (large hypo-dense lesions) or None
    lobulation: _SmoothField

    @property
    def radius_mm(self) -> float:
        return float(np.cbrt(np.prod(self.axes)))


class _Anatomy:
    """One patient: body, organs, bones, vessels and tumours, drawn from ``rng`` in mm."""

    def __init__(self, rng: np.random.Generator, fov: float, coverage: float):
        u = rng.uniform
        self.coverage = coverage
        half = fov / 2
        # Body outline (skin): semi-axes A (left-right), B (antero-posterior), in mm.
        self.body_shift = np.array([u(-6, 10), u(-6, 6)])  # (y, x) of body centre in the FOV
        a_max = (half - 4 - abs(self.body_shift[1])) / 1.05
        self.A = u(min(135.0, a_max - 5), min(165.0, a_max))
        self.B = u(0.66, 0.8) * self.A
        self.B = min(self.B, (half - 35 - abs(self.body_shift[0])) / 1.05)
        self.fourier = rng.normal(0, 1, (2, 4, 2)) * (0.025 / np.arange(1, 5))[None, :, None]
        self.fat = u(6, 28)  # subcutaneous fat thickness (mm), anterior/lateral reference
        self.muscle = u(8, 13)
        self.hu_fat = u(-115, -85)
        self.hu_muscle = u(40, 60)
        # Cavity semi-axes, used to place organs relative to the patient's build.
        self.ac = self.A - self.fat - self.muscle
        self.bc = self.B - 0.6 * self.fat - self.muscle
        su, sv = self.ac / 112.0, self.bc / 78.0
        self.su, self.sv = su, sv
        # Spine: vertebral body centre (y, x) and radii; canal behind it.
        self.vb = np.array([self.B - u(70, 80), 0.0])
        self.vb_r = np.array([u(15, 19), u(19, 24)])  # (y, x) radii
        self.level_h = u(30, 35)
        self.level_phase = u(0, self.level_h)
        self.hu_cortex = u(600, 900)
        self.hu_cancellous = u(160, 280)
        # Diaphragm domes (height of the liver dome above the lowest slice), right higher.
        self.dome_r = coverage * u(0.84, 0.9)
        self.dome_l = self.dome_r - u(8, 22)
        # Vessels.
        vy = self.vb[0] - self.vb_r[0]
        self.aorta = (np.array([vy - u(12, 15), u(8, 16)]), u(10, 13.5), u(140, 200))
        self.ivc = (np.array([vy - u(8, 14), -u(20, 28) * su]), (u(9, 12), u(11, 15)), u(110, 140))
        # Liver: right lobe, left lobe, caudate; sizes vary strongly between cases.
        ls = u(0.92, 1.2)
        top = self.dome_r
        self.liver_parts = [
            _Ellipsoid(
                np.array([top - 62 * ls, -8 * sv + u(-5, 5), -62 * su + u(-6, 6)]),
                np.array([72 * ls, 88 * sv * ls, 78 * su * ls]),
                _rotation(u(-0.2, 0.2), u(0.15, 0.35), u(-0.1, 0.1)),
            ),
            _Ellipsoid(
                np.array([top - 38 * ls, -42 * sv + u(-6, 6), 18 * su + u(-10, 10)]),
                np.array([38 * ls, 34 * sv * u(0.8, 1.2), 62 * su * u(0.6, 1.25)]),
                _rotation(u(-0.4, -0.1), u(-0.15, 0.15)),
            ),
            _Ellipsoid(
                np.array([top - 55, vy - 20 * sv, -12 * su]),
                np.array([32.0, 20 * sv, 22 * su]),
                _rotation(0.0),
            ),
        ]
        self.liver_noise = _SmoothField(rng, (0, -120, -200), (coverage, 120, 200), 28.0, 0.08)
        self.hu_liver = u(100, 130)
        self.liver_texture = _SmoothField(rng, (0, -120, -200), (coverage, 120, 200), 12.0, 3.0)
        # Kidneys (right lower), spleen, stomach, gallbladder, pancreas.
        kidney_y = self.vb[0] - u(0, 10)
        self.kidneys = []
        for side, hc in ((-1, u(70, 95)), (1, u(85, 110))):
            self.kidneys.append(
                _Ellipsoid(
                    np.array([hc, kidney_y, side * (self.vb_r[1] + u(40, 52)) * su]),
                    np.array([u(48, 58), u(26, 32), u(22, 27)]),
                    _rotation(side * u(0.35, 0.7), side * u(-0.2, -0.05)),
                )
            )
        self.hu_kidney = (u(150, 190), u(95, 130))  # cortex, medulla
        self.spleen = _Ellipsoid(
            np.array([self.dome_l - u(40, 60), self.vb[0] - u(5, 20) * sv, u(80, 92) * su]),
            np.array([u(40, 55), u(45, 60) * sv, u(20, 30) * su]),
            _rotation(u(0.5, 0.9)),
        )
        self.hu_spleen = u(105, 130)
        self.stomach = _Ellipsoid(
            np.array([self.dome_l - u(35, 50), -u(25, 45) * sv, u(35, 55) * su]),
            np.array([u(40, 60), u(30, 42) * sv, u(35, 48) * su]),
            _rotation(u(-0.6, -0.2), u(-0.3, 0.0)),
        )
        self.stomach_gas = u(0.15, 0.6)  # fraction of the AP extent above the air-fluid level
        self.gallbladder = None
        if u() < 0.7:
            self.gallbladder = _Ellipsoid(
                np.array([top - 62 * ls - u(20, 40), -u(25, 40) * sv, -u(30, 50) * su]),
                np.array([u(28, 40), u(11, 16), u(11, 16)]),
                _rotation(u(-0.3, 0.3), u(0.2, 0.5)),
            )
        ph = self.dome_l - u(60, 80)
        self.pancreas = _Tube(
            np.array(
                [
                    [ph - 12, vy - 38 * sv, -28 * su],
                    [ph - 4, vy - 45 * sv, 0.0],
                    [ph + 4, vy - 38 * sv, 40 * su],
                    [ph + 10, vy - 12 * sv, 72 * su],
                ]
            ),
            np.array([16.0, 11.0, 10.0, 8.0]) * u(0.8, 1.1),
        )
        self.hu_pancreas = u(85, 110)
        # Bowel: colon frame and small-bowel loops (random walks).
        self.bowel = self._bowel(rng)
        self.bowel_texture = _SmoothField(rng, (0, -120, -200), (coverage, 120, 200), 9.0, 1.0)
        # Ribs: posterior heights every ~one vertebral level from the dome downwards.
        # (posterior height mm, angular end rad); the lowest two are short floating ribs.
        first, spacing = coverage + 80.0, u(26, 32)
        n_ribs = int(np.ceil((first - self.dome_r + 110) / spacing))
        self.ribs = [
            (first - spacing * i + u(-3, 3), u(1.9, 2.5) if i < n_ribs - 2 else u(1.2, 1.6))
            for i in range(n_ribs)
        ]
        # Heart (inferior part) above the left dome.
        self.heart = _Ellipsoid(
            np.array([self.dome_l + u(45, 60), -u(25, 40) * sv, u(10, 25) * su]),
            np.array([65.0, 55 * sv, 65 * su]),
            _rotation(u(0.3, 0.6)),
        )
        # Intra-hepatic vessels.
        self.vessels = self._vessel_tree(rng, top, ls)
        self.hu_portal = u(150, 190)
        self.hu_hepatic_vein = u(130, 170)
        self.tumours: list[_Tumour] = []

    # --- helpers to draw structures -----------------------------------------------------------
    def _bowel(self, rng: np.random.Generator) -> list[tuple[_Tube, str]]:
        u = rng.uniform
        su, sv = self.su, self.sv
        right, left = -88 * su, 90 * su
        hf = self.dome_r - u(95, 120)  # hepatic flexure height
        tubes: list[tuple[_Tube, str]] = [
            (
                _Tube(
                    np.array(
                        [
                            [-20.0, -10 * sv, right],
                            [hf - 20, -5 * sv, right + 5],
                            [hf, -40 * sv, right + 20],
                        ]
                    ),
                    np.full(3, u(18, 24)),
                ),
                "colon",
            ),
            (
                _Tube(
                    np.array(
                        [
                            [hf, -40 * sv, right + 20],
                            [hf - u(10, 40), -70 * sv, 0.0],
                            [self.dome_l - 50, -45 * sv, left - 10],
                        ]
                    ),
                    np.full(3, u(16, 22)),
                ),
                "colon",
            ),
            (
                _Tube(
                    np.array(
                        [
                            [self.dome_l - 50, -45 * sv, left - 10],
                            [100.0, 5 * sv, left],
                            [-20.0, -5 * sv, left - 5],
                        ]
                    ),
                    np.full(3, u(14, 20)),
                ),
                "colon",
            ),
        ]
        for _ in range(int(rng.integers(8, 15))):
            p = np.array([u(0, hf - 20), u(-75, -10) * sv, u(-55, 55) * su])
            pts = [p]
            direction = rng.normal(size=3)
            for _ in range(4):
                direction = direction + rng.normal(size=3) * 0.8
                direction /= np.linalg.norm(direction)
                p = p + direction * u(20, 35)
                p = np.clip(p, [-10, -85 * sv, -65 * su], [hf, 10 * sv, 65 * su])
                pts.append(p)
            tubes.append(
                (
                    _Tube(np.array(pts), np.full(len(pts), u(9, 15))),
                    "fluid" if u() < 0.6 else "collapsed",
                )
            )
        return tubes

    def _vessel_tree(
        self, rng: np.random.Generator, top: float, ls: float
    ) -> list[tuple[_Tube, str]]:
        u = rng.uniform
        su, sv = self.su, self.sv
        tubes: list[tuple[_Tube, str]] = []

        def grow(start, direction, length, radius, depth, kind):
            direction = direction / np.linalg.norm(direction)
            end = start + direction * length
            tubes.append((_Tube(np.array([start, end]), np.array([radius, radius * 0.8])), kind))
            if depth == 0:
                return
            for _ in range(2):
                d = direction + rng.normal(size=3) * 0.55
                grow(end, d, length * u(0.6, 0.8), radius * 0.7, depth - 1, kind)

        hilum = np.array([top - 62 * ls - u(0, 10), -10 * sv, -32 * su])
        grow(hilum, np.array([0.4, 0.1, -1.0]), 38 * ls, u(6, 8), 3, "portal")
        grow(hilum, np.array([0.5, -1.0, 0.6]), 32 * ls, u(5, 6.5), 2, "portal")
        confluence = np.array([top - u(12, 20), self.ivc[0][0], self.ivc[0][1]])
        for target in ([-0.5, 0.0, -1.0], [-0.6, -1.0, -0.6], [-0.3, -1.0, 0.4]):
            grow(
                confluence,
                np.array(target) + rng.normal(size=3) * 0.15,
                45 * ls,
                u(5, 7),
                2,
                "hepatic",
            )
        return tubes

    # --- outline --------------------------------------------------------------------------------
    def body_depth(self, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
        """Depth below the skin (mm, > 0 inside), shape (Z, Y, X), and the polar angle (rad,
        0 toward patient left, +pi/2 posterior) of each (y, x) column, shape (1, Y, X)."""
        y = grid.y[None, :, None].astype(np.float32)
        x = grid.x[None, None, :].astype(np.float32)
        yn, xn = y / float(self.B), x / float(self.A)
        theta = np.arctan2(yn, xn)  # (1, Y, X): 0 patient left, +pi/2 posterior
        # Posterior side flatter (superellipse).
        p = np.where(y > 0, 2.6, 2.0).astype(np.float32)
        rho = (np.abs(xn) ** p + np.abs(yn) ** p) ** (1.0 / p)
        # Outline irregularity: harmonics 2..5 whose coefficients drift linearly with height.
        frac = np.clip(grid.z / self.coverage, 0, 1)[:, None]  # (Z, 1)
        coef = self.fourier[0] * (1 - frac[:, :, None]) + self.fourier[1] * frac[:, :, None]
        coef = coef.reshape(len(grid.z), 8).astype(np.float32)  # (Z, 8): (k, cos|sin)
        basis = np.stack([f((k + 2) * theta[0]) for k in range(4) for f in (np.cos, np.sin)])
        delta = (coef @ basis.reshape(8, -1)).reshape(grid.shape)
        radius = np.sqrt((self.A * np.cos(theta)) ** 2 + (self.B * np.sin(theta)) ** 2)
        depth = (1.0 + delta - rho) * radius.astype(np.float32)
        return depth.astype(np.float32, copy=False), theta

    def diaphragm(self, grid: _Grid) -> np.ndarray:
        """Height (mm) of the diaphragm above each (y, x) column, shape (1, Y, X)."""
        y = grid.y[None, :, None]
        x = grid.x[None, None, :]
        dome = self.dome_l + (self.dome_r - self.dome_l) * 0.5 * (1 - np.tanh(x / 25.0))
        # Each hemidiaphragm peaks mid-way laterally; the central tendon (heart) lies lower.
        lateral = 100.0 * ((np.abs(x) - 0.5 * self.ac) / self.ac) ** 2
        posterior = 40.0 * np.clip((y + 10.0) / self.bc, 0, None) ** 2
        anterior = 20.0 * np.clip(-(y + 20.0) / self.bc, 0, None) ** 2
        return (dome - lateral - posterior - anterior).astype(np.float32)

    def liver_sdf(self, grid: _Grid, box) -> np.ndarray:
        """Implicit liver function (< 0 inside, before clipping) on a box."""
        z, y, x = grid.coords(box)
        f = None
        for part in self.liver_parts:
            g = part.radius(z, y, x) - 1.0
            f = g if f is None else _smin(f, g, 0.25)
        return f + self.liver_noise.sample_box(grid, box)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


@dataclass
class _Rendered:
    image: np.ndarray  # (Z, Y, X) float32 HU, noiseless
    liver: np.ndarray  # bool
    tumour: np.ndarray  # bool
    tumour_voxels: list[int]


def _render(anat: _Anatomy, grid: _Grid, with_tumours: bool = True) -> _Rendered:
    """Paint the anatomy on a grid: noiseless HU image and liver/tumour masks.

    Structures are painted in a fixed order (later ones overwrite earlier ones): table, body
    wall, thorax, spine and ribs, great vessels, abdominal organs, liver, intra-hepatic vessels,
    tumours.
    """
    img = np.full(grid.shape, AIR_HU, np.float32)
    _paint_table(anat, grid, img)
    depth, theta = anat.body_depth(grid)
    body = depth > 0
    fat, wall = _paint_body_wall(anat, img, depth, theta, body)
    cavity = depth >= wall + 1.0
    below = _paint_thorax(anat, grid, img, cavity)
    # Paraspinal and psoas muscles, then the spine and ribs.
    retro = _paint_spine(anat, grid, img, body, depth >= fat)
    _paint_ribs(anat, grid, img, depth, theta, wall)
    # Great vessels (vertical tubes), bowel, organs; each clipped to the abdominal cavity.
    aorta, ivc = _paint_great_vessels(anat, grid, img, body, cavity)
    ok = below & ~ivc & ~aorta & ~retro
    perirenal, gall = _paint_organs(anat, grid, img, ok)
    # Liver: clipped to the cavity below the diaphragm, minus IVC, gallbladder, perirenal fat.
    liver = _paint_liver(anat, grid, img, ok & ~gall & ~perirenal)
    _paint_liver_vessels(anat, grid, img, liver)

    tumour = np.zeros(grid.shape, bool)
    counts: list[int] = []
    if with_tumours:
        for tm in anat.tumours:
            counts.append(_paint_tumour(grid, img, liver, tumour, tm))
    return _Rendered(img, liver & body, tumour & liver, counts)


def _paint_table(anat: _Anatomy, grid: _Grid, img: np.ndarray) -> None:
    """The table under the patient: two carbon shells around foam."""
    yt = anat.B - 1.0 + 0.0006 * grid.x[None, :] ** 2  # (1, X) top of the table (mm)
    dy = grid.y[:, None] - yt  # (Y, X)
    table = np.where(
        (dy >= 0) & (dy < 2.5),
        250.0,
        np.where(
            (dy >= 2.5) & (dy < 22), -900.0, np.where((dy >= 22) & (dy < 24.5), 250.0, np.nan)
        ),
    )
    table = np.where(np.abs(grid.x)[None, :] < 0.9 * FOV_MM / 2, table, np.nan)
    img[:] = np.where(np.isnan(table), img, table[None].astype(np.float32))


def _paint_body_wall(
    anat: _Anatomy, img: np.ndarray, depth: np.ndarray, theta: np.ndarray, body: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Subcutaneous fat and the muscle wall; returns their inner depths (mm), each (1, Y, X).

    Fat is thicker anteriorly and laterally, thinner posteriorly.
    """
    s = np.sin(theta)
    fat = anat.fat * (1.0 + 0.35 * np.clip(-s, 0, None) - 0.45 * np.clip(s, 0, None))
    wall = fat + anat.muscle * (1.0 + 0.3 * np.clip(s, 0, None))
    img[body] = anat.hu_fat
    img[body & (depth >= fat) & (depth < wall)] = anat.hu_muscle
    return fat, wall


def _paint_thorax(anat: _Anatomy, grid: _Grid, img: np.ndarray, cavity: np.ndarray) -> np.ndarray:
    """Lung bases and heart above the diaphragm, the diaphragm muscle, abdominal fat below.

    Returns:
        The abdominal cavity below the diaphragm, (Z, Y, X) bool.
    """
    zz = grid.z[:, None, None]
    dia = anat.diaphragm(grid)
    above = cavity & (zz > dia)
    mediastinum = (
        ((grid.y[None, :, None] - (anat.vb[0] - anat.vb_r[0] - 12)) / 18.0) ** 2
        + (grid.x[None, None, :] / 32.0) ** 2
    ) < 1.0
    img[above] = -850.0
    below = cavity & (zz <= dia - 3.0)
    img[cavity & ~above & ~below] = anat.hu_muscle  # diaphragm muscle
    img[below] = anat.hu_fat + 5.0  # intra-abdominal fat
    box = grid.box(*anat.heart.bounds())
    if box is not None:
        q = anat.heart.radius(*grid.coords(box))
        sel = (q < 1.0) & above[box]
        img[box][sel] = np.where(q[sel] < 0.75, 135.0, 70.0)
    img[above & mediastinum] = 40.0
    return below


def _paint_great_vessels(
    anat: _Anatomy, grid: _Grid, img: np.ndarray, body: np.ndarray, cavity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Aorta and inferior vena cava (vertical tubes); returns their masks (Z, Y, X)."""
    ya, xa = anat.aorta[0]
    ra = anat.aorta[1]
    yy, xx = grid.y[None, :, None], grid.x[None, None, :]
    aorta = np.broadcast_to((yy - ya) ** 2 + (xx - xa) ** 2 < ra * ra, grid.shape) & body
    img[aorta] = anat.aorta[2]
    (yi, xi), (riy, rix), hui = anat.ivc
    ivc = (
        np.broadcast_to(((yy - yi) / riy) ** 2 + ((xx - xi) / rix) ** 2 < 1.0, grid.shape) & cavity
    )
    img[ivc] = hui
    return aorta, ivc


def _paint_organs(
    anat: _Anatomy, grid: _Grid, img: np.ndarray, ok: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bowel, pancreas, stomach, kidneys, spleen and gallbladder, each only where ``ok``.

    Returns:
        (perirenal, gallbladder) masks (Z, Y, X), which the liver must not cover.
    """
    bowel_tex = anat.bowel_texture.sample(grid.z, grid.y, grid.x)
    for tube, kind in anat.bowel:
        _paint_bowel(grid, img, tube, kind, ok, bowel_tex)
    for box, d, r in _tube_pieces(grid, anat.pancreas):
        img[box][(d <= r) & ok[box]] = anat.hu_pancreas
    _paint_stomach(anat, grid, img, ok)
    perirenal = np.zeros(grid.shape, bool)
    for side, kid in zip((-1.0, 1.0), anat.kidneys, strict=True):
        _paint_kidney(anat, grid, img, ok, perirenal, kid, side)
    box = grid.box(*anat.spleen.bounds())
    if box is not None:
        q = anat.spleen.radius(*grid.coords(box))
        img[box][(q < 1.0) & ok[box]] = anat.hu_spleen
    return perirenal, _paint_gallbladder(anat, grid, img, ok)


def _paint_stomach(anat: _Anatomy, grid: _Grid, img: np.ndarray, ok: np.ndarray) -> None:
    """Stomach: wall, fluid, gas above the air-fluid level (anterior = low y when supine)."""
    st = anat.stomach
    box = grid.box(*st.bounds())
    if box is None:
        return
    q = st.radius(*grid.coords(box))
    y = grid.coords(box)[1]
    sel = (q < 1.0) & ok[box]
    level = st.centre[1] - st.axes[1] + 2 * st.axes[1] * anat.stomach_gas
    inner = q < 1.0 - 5.0 / float(st.axes.min())
    sub = img[box]
    sub[sel] = 60.0
    sub[sel & inner] = 15.0
    sub[sel & inner & np.broadcast_to(y < level, q.shape)] = AIR_HU


def _paint_kidney(
    anat: _Anatomy,
    grid: _Grid,
    img: np.ndarray,
    ok: np.ndarray,
    perirenal: np.ndarray,
    kid: _Ellipsoid,
    side: float,
) -> None:
    """One kidney (cortex, medulla, sinus fat / pelvis toward the hilum) in its perirenal fat.

    Args:
        perirenal: (Z, Y, X) mask, set to the kidney's perirenal fat inside its box.
        side: -1 for the right kidney, +1 for the left one.
    """
    fat_box = _perirenal(kid)
    box = grid.box(*fat_box.bounds())
    if box is None:
        return
    perirenal[box] = (fat_box.radius(*grid.coords(box)) < 1.0) & ok[box]
    img[box][perirenal[box]] = anat.hu_fat + 10.0
    q = kid.radius(*grid.coords(box))
    sel = (q < 1.0) & ok[box]
    sub = img[box]
    sub[sel] = anat.hu_kidney[0]
    sub[sel & (q < 0.72)] = anat.hu_kidney[1]
    # The hilum faces medially (toward x = 0) and a little anteriorly.
    offset = kid.rot @ (np.array([0.0, -0.15, -0.55 * side]) * kid.axes)
    hilum = _Ellipsoid(kid.centre + offset, kid.axes * np.array([0.45, 0.4, 0.45]), kid.rot)
    qh = hilum.radius(*grid.coords(box))
    sub[sel & (qh < 1.0)] = -60.0
    sub[sel & (qh < 0.5)] = 10.0


def _paint_gallbladder(anat: _Anatomy, grid: _Grid, img: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Gallbladder (fluid, not liver) with its wall; returns its lumen mask (Z, Y, X)."""
    gall = np.zeros(grid.shape, bool)
    if anat.gallbladder is None:
        return gall
    box = grid.box(*anat.gallbladder.bounds())
    if box is not None:
        q = anat.gallbladder.radius(*grid.coords(box))
        gall[box] = (q < 1.0) & ok[box]
        img[box][gall[box]] = 12.0
        img[box][(q >= 1.0) & (q < 1.12) & ok[box]] = 45.0
    return gall


def _paint_liver(anat: _Anatomy, grid: _Grid, img: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Liver parenchyma: the implicit shape where ``free``, kept clear of the stomach, right
    kidney, spleen and spine; returns the liver mask (Z, Y, X)."""
    liver = np.zeros(grid.shape, bool)
    lo = np.min([p.bounds()[0] for p in anat.liver_parts], axis=0)
    hi = np.max([p.bounds()[1] for p in anat.liver_parts], axis=0)
    box = grid.box(lo, hi)
    if box is None:
        return liver
    m = (anat.liver_sdf(grid, box) < 0) & free[box]
    z, y, x = grid.coords(box)
    for organ, grow in ((anat.stomach, 1.04), (anat.kidneys[0], 1.08), (anat.spleen, 1.05)):
        m &= organ.radius(z, y, x) >= grow
    spine_clear = ((y - anat.vb[0]) / (anat.vb_r[0] + 8)) ** 2 + (
        x / (anat.vb_r[1] + 8)
    ) ** 2 >= 1.0
    m &= np.broadcast_to(spine_clear, m.shape)
    liver[box] = m
    tex = anat.liver_texture.sample_box(grid, box)
    img[box][m] = (anat.hu_liver + tex)[m]
    return liver


def _paint_liver_vessels(anat: _Anatomy, grid: _Grid, img: np.ndarray, liver: np.ndarray) -> None:
    """Intra-hepatic portal and hepatic veins (liver label), painted only inside the liver."""
    for tube, kind in anat.vessels:
        hu = anat.hu_portal if kind == "portal" else anat.hu_hepatic_vein
        for box, d, r in _tube_pieces(grid, tube):
            img[box][(d <= r) & liver[box]] = hu


def _perirenal(kidney: _Ellipsoid) -> _Ellipsoid:
    """The perirenal fat around a kidney, extending posteriorly to the back muscles."""
    return _Ellipsoid(
        kidney.centre + np.array([0.0, 14.0, 0.0]),
        kidney.axes * np.array([1.15, 1.6, 1.35]),
        kidney.rot,
    )


def _paint_spine(
    anat: _Anatomy, grid: _Grid, img: np.ndarray, body: np.ndarray, under_fat: np.ndarray
) -> np.ndarray:
    """Paraspinal muscles, psoas, vertebral body (cortex/cancellous/discs), arch and processes.

    Painted slice by slice (the cross-sections only change with the vertebral level and the
    psoas size). Returns the mask (Z, Y, X) of everything painted, which later structures must
    not cover.
    """
    y = grid.y[:, None]
    x = grid.x[None, :]
    vy, (ry, rx) = float(anat.vb[0]), (float(v) for v in anat.vb_r)
    canal_y = vy + ry + 9.0
    erector = np.zeros((grid.y.size, grid.x.size), bool)
    for side in (-1, 1):  # erector spinae, both sides of the spinous process
        erector |= ((y - (canal_y + 28)) / 24.0) ** 2 + ((x - side * 30) / 26.0) ** 2 < 1.0
    q = np.sqrt(((y - vy) / ry) ** 2 + (x / rx) ** 2)
    vert, cortex = q < 1.0, (q < 1.0) & (q >= 1.0 - 2.5 / ry)
    rc = np.sqrt((y - canal_y) ** 2 + x**2)
    canal = rc < 9.0
    arch = (rc >= 9.0) & (rc < 15.0) & (y > vy + ry - 2)
    spinous = (np.abs(x) < 4.5) & (y >= canal_y + 12) & (y < canal_y + 42)
    posterior = arch | spinous
    transverse = (np.abs(y - (vy + ry + 6)) < 3.0) & (np.abs(x) > rx - 4) & (np.abs(x) < rx + 18)
    hu_arch = 0.5 * (anat.hu_cortex + anat.hu_cancellous)
    painted = np.zeros(img.shape, bool)
    for k, h in enumerate(grid.z.tolist()):
        sl, done = img[k], painted[k]
        m = erector & under_fat[k]
        sl[m] = anat.hu_muscle
        done |= m
        # Psoas: appears below the kidneys' upper poles and grows toward the pelvis.
        r_psoas = float(np.clip(6 + 20 * (1 - h / (anat.dome_r - 80)), 0, 22))
        if r_psoas > 0:
            for side in (-1, 1):
                m = (
                    (y - (vy + 4)) ** 2 + (x - side * (rx + 0.8 * r_psoas + 2)) ** 2 < r_psoas**2
                ) & body[k]
                sl[m] = anat.hu_muscle - 5
                done |= m
        phase = (h - anat.level_phase) % anat.level_h
        disc = phase < 7.0
        sl[vert] = 90.0 if disc else anat.hu_cancellous
        if not disc:
            sl[cortex] = anat.hu_cortex
            sl[posterior & body[k]] = hu_arch
        if 10 < phase < 22:  # transverse processes at mid-vertebra
            sl[transverse] = hu_arch
            done |= transverse
        sl[canal] = 25.0
        done |= vert | (posterior & body[k]) | (rc < 15.0)
    return painted


def _paint_ribs(
    anat: _Anatomy,
    grid: _Grid,
    img: np.ndarray,
    depth: np.ndarray,
    theta: np.ndarray,
    wall: np.ndarray,
) -> None:
    """Ribs: oblique bone arcs in the body wall of the upper slices (cortex + marrow) and the
    costal cartilages continuing the upper ribs anteriorly.

    Args:
        depth: (Z, Y, X) depth below the skin (mm).
        theta: (1, Y, X) polar angle (rad).
        wall: (1, Y, X) depth of the inner surface of the muscle wall (mm).
    """
    centre_depth = wall - 3.0
    ring = np.abs(depth - centre_depth) < 6.0
    idx = np.nonzero(ring)
    if idx[0].size == 0:
        return
    h = grid.z[idx[0]]
    dd = depth[idx] - centre_depth[0][idx[1], idx[2]]
    # Angle from the posterior midline, 0 (back) .. pi (front), both sides alike.
    phi = np.abs(np.angle(np.exp(1j * (theta[0][idx[1], idx[2]] - np.pi / 2))))
    for h0, phi_end in anat.ribs:
        hc = h0 - 90.0 * (phi / np.pi) ** 1.3  # ribs descend toward the front
        r = np.sqrt(((h - hc) / 6.0) ** 2 + (dd / 4.5) ** 2)
        bone = (r < 1.0) & (phi > 0.35) & (phi < phi_end)
        cartilage = (r < 0.9) & (phi >= phi_end) & (phi < phi_end + 0.5) & (phi_end > 1.8)
        vals = np.where(r < 0.6, anat.hu_cancellous, anat.hu_cortex).astype(np.float32)
        img[tuple(i[bone] for i in idx)] = vals[bone]
        img[tuple(i[cartilage] for i in idx)] = 130.0


def _paint_bowel(
    grid: _Grid, img: np.ndarray, tube: _Tube, kind: str, ok: np.ndarray, texture: np.ndarray
) -> None:
    """A bowel segment: enhancing wall (3 mm) around a lumen.

    ``kind``: "colon" (stool mottled with gas), "fluid" (small bowel with fluid and some gas
    anteriorly) or "collapsed" (soft tissue).
    """
    for box, d, r in _tube_pieces(grid, tube):
        outer = (d <= r) & ok[box]
        if not outer.any():
            continue
        lumen = outer & (d <= r - 3.0)
        sub = img[box]
        sub[outer] = 70.0
        if kind == "collapsed":
            sub[lumen] = 45.0
            continue
        tex = texture[box]
        if kind == "colon":
            sub[lumen] = np.where(tex > 0.3, AIR_HU, 20.0 + 25.0 * tex)[lumen]
        else:
            y = grid.y[box[1]][None, :, None]
            sub[lumen] = 15.0
            sub[lumen & (tex > 1.1) & (y < np.median(tube.points[:, 1]))] = AIR_HU


def _paint_tumour(
    grid: _Grid, img: np.ndarray, liver: np.ndarray, tumour: np.ndarray, tm: _Tumour
) -> int:
    ell = _Ellipsoid(tm.centre, tm.axes, tm.rot)
    box = grid.box(*ell.bounds(margin=2.0))
    if box is None:
        return 0
    q = ell.radius(*grid.coords(box)) + tm.lobulation.sample_box(grid, box)
    m = (q < 1.0) & liver[box]
    sub = img[box]
    sub[m] = tm.hu
    if tm.core_hu is not None:
        sub[m & (q < 0.55)] = tm.core_hu
    tumour[box] |= m
    return int(m.sum())


def _place_tumours(anat: _Anatomy, rng: np.random.Generator) -> None:
    """Draw 0..4 tumours with centres deep enough inside the liver (on a 4 mm reference grid)."""
    n = int(rng.integers(0, 5))
    if n == 0:
        return
    depth_map = _liver_depth(anat, step=4.0)
    if depth_map is None:
        return
    ref, depth = depth_map
    max_depth = float(depth.max())
    for _ in range(n):
        anat.tumours.append(_draw_tumour(anat, rng, ref, depth, max_depth))


def _liver_depth(anat: _Anatomy, step: float) -> tuple[_Grid, np.ndarray] | None:
    """Depth inside the liver (mm) on a reference grid of ``step`` mm cropped to the liver.

    Returns:
        (grid, depth (Z, Y, X) mm, 0 outside the liver), or None when the liver is empty.
    """
    lo = np.min([p.bounds()[0] for p in anat.liver_parts], axis=0)
    hi = np.max([p.bounds()[1] for p in anat.liver_parts], axis=0)
    ref = _Grid(*(np.arange(a, b + step, step) for a, b in zip(lo, hi, strict=True)))
    ref = _Grid(ref.z[(ref.z >= 0) & (ref.z <= anat.coverage)], ref.y, ref.x)
    rendered = _render(anat, ref, with_tumours=False)
    if not rendered.liver.any():
        return None
    # Crop to the liver (plus a 1-voxel background border) before the distance transform.
    crop = tuple(
        slice(max(s.start - 1, 0), s.stop + 1)
        for s in ndimage.find_objects(rendered.liver.astype(np.uint8))[0]
    )
    ref = _Grid(ref.z[crop[0]], ref.y[crop[1]], ref.x[crop[2]])
    return ref, ndimage.distance_transform_edt(rendered.liver[crop], sampling=step)


def _tumour_centre(
    anat: _Anatomy,
    rng: np.random.Generator,
    ref: _Grid,
    depth: np.ndarray,
    max_depth: float,
    radius: float,
) -> np.ndarray:
    """A random reference-grid point deep enough for ``radius`` (mm), away from the tumours
    already drawn when there is room; (z, y, x) mm."""
    candidates = np.argwhere(depth >= min(0.8 * radius + 2.0, max_depth))
    for other in anat.tumours:  # avoid overlapping lesions when there is room
        c = np.stack(
            [ref.z[candidates[:, 0]], ref.y[candidates[:, 1]], ref.x[candidates[:, 2]]], axis=1
        )
        far = np.linalg.norm(c - other.centre, axis=1) > radius + other.radius_mm
        if far.any():
            candidates = candidates[far]
    k, j, i = candidates[int(rng.integers(len(candidates)))]
    return np.array([ref.z[k], ref.y[j], ref.x[i]])


def _draw_tumour(
    anat: _Anatomy, rng: np.random.Generator, ref: _Grid, depth: np.ndarray, max_depth: float
) -> _Tumour:
    """One tumour: radius 3-30 mm (log-uniform), hypo- (65 %) or hyper-dense, lobulated."""
    radius = float(np.exp(rng.uniform(np.log(3.0), np.log(30.0))))
    radius = min(radius, max(3.0, 0.8 * max_depth))
    centre = _tumour_centre(anat, rng, ref, depth, max_depth, radius) + rng.uniform(-1, 1, 3)
    axes = radius * rng.uniform(0.8, 1.2, 3)
    hyper = rng.uniform() < 0.35
    hu = rng.uniform(150, 200) if hyper else rng.uniform(30, 60)
    core = rng.uniform(5, 25) if (not hyper and radius > 15 and rng.uniform() < 0.5) else None
    lob = _SmoothField(
        rng, centre - radius * 1.5, centre + radius * 1.5, max(radius * 0.6, 2.5), 0.12
    )
    rot = _rotation(*rng.uniform(-np.pi, np.pi, 3))
    return _Tumour(centre, axes, rot, "hyper" if hyper else "hypo", hu, core, lob)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def default_slices(size: int) -> int:
    """Default slice count for a matrix size: 64 at 256, scaled linearly (at least 8)."""
    return max(8, int(round(64 * size / 256)))


def _check_options(size: int, slices: int | None) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise LivsegError(f"phantom size (--size) must be an integer >= {MIN_SIZE}, got {size!r}")
    if slices is None:
        return default_slices(int(size))
    if isinstance(slices, bool) or not isinstance(slices, (int, np.integer)) or slices < 4:
        raise LivsegError(f"phantom slices (--slices) must be an integer >= 4, got {slices!r}")
    return int(slices)


@dataclass(frozen=True)
class PhantomInfo:
    """What was drawn for one phantom case.

    Attributes:
        seed: the case seed given to :func:`make_phantom`.
        noise_sd_hu: standard deviation of the added pixel noise (HU).
        liver_hu: mean liver parenchyma value before noise (HU).
        tumours: one dict per drawn tumour: ``kind`` ("hypo" | "hyper"), ``radius_mm``,
            ``hu``, ``centre_lps_mm`` (x, y, z) and ``voxels`` (labelled voxels, 0 when the lesion
            is too small for the sampling).
    """

    seed: int
    noise_sd_hu: float
    liver_hu: float
    tumours: list[dict] = field(default_factory=list)


def _make(
    seed: int, size: int = 256, slices: int | None = None
) -> tuple[Volume, Volume, PhantomInfo]:
    n_slices = _check_options(size, slices)
    size = int(size)
    anatomy_seq, noise_seq = np.random.SeedSequence(int(seed)).spawn(2)
    rng = np.random.default_rng(anatomy_seq)
    fov = FOV_MM * rng.uniform(0.95, 1.05)
    anat = _Anatomy(rng, fov, COVERAGE_MM)
    _place_tumours(anat, rng)
    noise_sd = float(rng.uniform(10.0, 20.0))
    z_origin = float(np.round(-COVERAGE_MM - rng.uniform(80, 160), 1))

    # Geometry: identity direction (LPS), FOV centred on the isocentre.
    sxy = round(fov / size, 4)
    sz = round(COVERAGE_MM / n_slices, 4)
    centre_index = (size - 1) / 2.0
    origin_xy = -centre_index * sxy
    origin = (z_origin, origin_xy, origin_xy)
    # Grid relative to the body centre (mm): body_shift is the body centre's (y, x) position.
    idx = np.arange(size, dtype=np.float64)
    grid = _Grid(
        z=np.arange(n_slices, dtype=np.float64) * sz,
        y=origin_xy + idx * sxy - anat.body_shift[0],
        x=origin_xy + idx * sxy - anat.body_shift[1],
    )
    rendered = _render(anat, grid)

    # Scanner: slight blur (in-plane PSF ~0.8 mm sd), correlated noise, integer HU.
    nrng = np.random.default_rng(noise_seq)
    psf = 0.8 / sxy
    img = ndimage.gaussian_filter(rendered.image, sigma=(0.3, psf, psf), mode="nearest")
    noise = nrng.standard_normal(img.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0.0, 0.7, 0.7))
    noise *= np.float32(noise_sd / max(float(noise.std()), 1e-6))
    img = np.rint(np.clip(img + noise, _HU_MIN, _HU_MAX)).astype(np.float32)

    label = np.zeros(img.shape, np.uint8)
    label[rendered.liver] = LABEL_LIVER
    label[rendered.tumour] = LABEL_TUMOUR
    image_vol = Volume.image(img, (sz, sxy, sxy), origin)
    label_vol = Volume.label(label, (sz, sxy, sxy), origin)

    tumours = []
    for tm, count in zip(anat.tumours, rendered.tumour_voxels, strict=True):
        zc, yc, xc = tm.centre
        # grid frame -> LPS (x, y, z): add the body shift and the z origin.
        lps = (float(xc + anat.body_shift[1]), float(yc + anat.body_shift[0]), float(zc + z_origin))
        tumours.append(
            {
                "kind": tm.kind,
                "radius_mm": round(tm.radius_mm, 2),
                "hu": round(float(tm.hu), 1),
                "centre_lps_mm": [round(v, 2) for v in lps],
                "voxels": count,
            }
        )
    info = PhantomInfo(
        seed=int(seed),
        noise_sd_hu=round(noise_sd, 2),
        liver_hu=round(float(anat.hu_liver), 1),
        tumours=tumours,
    )
    return image_vol, label_vol, info


def make_phantom(seed: int, size: int = 256, slices: int | None = None) -> tuple[Volume, Volume]:
    """Generate one synthetic abdominal CT case with its liver/tumour labels.

    The anatomy (body build, organ shapes and positions, liver shape and volume, tumours) is
    defined in millimetres from ``seed`` only, so ``size`` and ``slices`` change the sampling, not
    the patient. The same arguments always give byte-identical arrays.

    Args:
        seed: random seed (int >= 0). Use :func:`case_seed` to derive per-case seeds.
        size: in-plane matrix size (pixels, >= 32); in-plane spacing is about 350/size mm
            (the field of view varies by +-5 % between seeds).
        slices: number of axial slices covering 240 mm craniocaudally (slice spacing
            240/slices mm); default :func:`default_slices` (64 at size 256, i.e. 3.75 mm).

    Returns:
        ``(image, label)``: image float32 HU of shape (slices, size, size), integer-valued and
        clipped to [-1024, 3071]; label uint8 (0 background, 1 liver, 2 tumour, tumour only
        inside the liver) of the same shape. Both have identity direction (LPS: x to patient
        left, y posterior, z superior), the same spacing (sz, sy, sx) mm and origin.

    Raises:
        LivsegError: ``size`` or ``slices`` is invalid.
    """
    image, label, _ = _make(seed, size, slices)
    return image, label


def _case_paths(outdir: Path, n: int, dicom: bool) -> list[Path]:
    paths = [outdir / f"volume-{n}.nii.gz", outdir / f"segmentation-{n}.nii.gz"]
    if dicom:
        paths.append(outdir / "dicom" / f"case-{n}")
    return paths


def _check_dataset_options(cases: int, seed: int) -> None:
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < 1:
        raise LivsegError(f"phantom cases (--cases) must be an integer >= 1, got {cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise LivsegError(f"phantom seed (--seed) must be an integer >= 0, got {seed!r}")


def _check_outputs(outdir: Path, cases: int, dicom: bool, overwrite: bool) -> None:
    """Refuse before writing anything: ``outdir`` is a file, or an output exists."""
    if outdir.exists() and not outdir.is_dir():
        raise LivsegError(f"{outdir}: phantom output folder is a file")
    for n in range(cases):
        for path in _case_paths(outdir, n, dicom):
            if path.exists() and not overwrite:
                raise OutputExistsError(f"{path}: output exists (use --overwrite to replace it)")
    check_writable(outdir / "phantom.json", overwrite)


def _write_case(
    outdir: Path, n: int, seed: int, size: int, n_slices: int, dicom: bool, overwrite: bool
) -> tuple[list[Path], dict]:
    """Generate and write case ``n`` of a dataset; returns its paths and its manifest record."""
    from livseg.io import write_volume
    from livseg.io.dicom_writer import write_dicom_series

    cs = case_seed(seed, n)
    image, label, info = _make(cs, size, n_slices)
    img_path, seg_path, *dicom_path = _case_paths(outdir, n, dicom)
    written = [
        write_volume(image, img_path, overwrite=overwrite),
        write_volume(label, seg_path, overwrite=overwrite),
    ]
    if dicom:
        write_dicom_series(
            image,
            dicom_path[0],
            uid_seed=f"livseg-phantom-{seed}-{n}",
            series_description=f"livseg phantom case {n} (seed {seed})",
            patient_id=f"PHANTOM-{seed}-{n}",
            patient_name=f"Phantom^{seed}^{n}",
            study_date="20000101",
            overwrite=overwrite,
        )
        written.append(dicom_path[0])
    liver_ml = float(np.count_nonzero(label.array)) * label.voxel_volume_ml
    tumour_ml = float(np.count_nonzero(label.array == LABEL_TUMOUR)) * label.voxel_volume_ml
    record = {
        "case": n,
        "seed": cs,
        "image": img_path.name,
        "label": seg_path.name,
        "dicom": f"dicom/case-{n}" if dicom else None,
        "shape_zyx": list(image.shape),
        "spacing_zyx_mm": list(image.spacing),
        "origin_zyx_mm": list(image.origin),
        "liver_ml": round(liver_ml, 2),
        "tumour_ml": round(tumour_ml, 3),
        "noise_sd_hu": info.noise_sd_hu,
        "tumours": info.tumours,
    }
    log.info(
        "phantom case %d (seed %d): liver %.0f ml, %d tumour(s), %.1f ml tumour",
        n,
        cs,
        liver_ml,
        len(info.tumours),
        tumour_ml,
    )
    return written, record


def write_phantom_dataset(
    outdir: str | os.PathLike,
    cases: int,
    seed: int,
    size: int = 256,
    slices: int | None = None,
    dicom: bool = False,
    overwrite: bool = False,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> list[Path]:
    """Write a LiTS-style synthetic dataset: ``volume-N.nii.gz`` + ``segmentation-N.nii.gz``.

    Case N uses the seed ``case_seed(seed, N)``. With ``dicom=True`` each CT is also written as a
    DICOM CT series in ``dicom/case-N/`` (int16 stored values, deterministic UIDs). A
    ``phantom.json`` records the seeds, geometry and per-case liver/tumour volumes (ml).
    Every output is checked before anything is written, and each is written atomically.

    Args:
        outdir: output folder (created if missing).
        cases: number of cases (>= 1).
        seed: dataset seed (int >= 0).
        size: in-plane matrix size (pixels).
        slices: slices per case; default :func:`default_slices`.
        dicom: also write DICOM series.
        overwrite: replace existing outputs.
        progress: optional wrapper around the iterable of case indexes (a progress bar).

    Returns:
        The written paths: per case the image and label NIfTI (and the DICOM folder), then
        ``phantom.json``.

    Raises:
        LivsegError: invalid ``cases``, ``size``, ``slices`` or ``seed``.
        OutputExistsError: an output exists and ``overwrite`` is False.
    """
    _check_dataset_options(cases, seed)
    n_slices = _check_options(size, slices)
    outdir = Path(outdir)
    _check_outputs(outdir, cases, dicom, overwrite)

    written: list[Path] = []
    records = []
    indexes: Iterable[int] = range(cases)
    if progress is not None:
        indexes = progress(indexes)
    for n in indexes:
        paths, record = _write_case(outdir, n, seed, size, n_slices, dicom, overwrite)
        written += paths
        records.append(record)
    meta = {
        "generator": "livseg.phantom",
        "livseg_version": __version__,
        "seed": int(seed),
        "size": int(size),
        "slices": n_slices,
        "liver_ml": "liver incl. tumour (labels 1+2)",
        "cases": records,
    }
    manifest = outdir / "phantom.json"
    write_text_atomic(manifest, json.dumps(meta, indent=2) + "\n", overwrite=overwrite)
    written.append(manifest)
    return written
