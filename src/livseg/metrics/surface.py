"""Surface (boundary) distances between two binary masks, in millimetres.

Definitions (those of the official LiTS scorer's ``helpers/surface.py``, itself MedPy's
``Surface`` class, and of MedPy 0.5.2's ``__surface_distances`` with ``connectivity=2``):

* **boundary** of a mask = ``mask XOR erosion(mask, 18-neighbourhood)``, with everything outside
  the array counted as background (so a mask touching the array edge has a boundary there);
* a boundary point is the **centre** of a boundary voxel; its position in mm is
  ``index * spacing`` (offsets cancel, both masks share the grid);
* ``d(a, B)`` = Euclidean distance (mm) from boundary point ``a`` of one mask to the nearest
  boundary point of the other mask, computed **in both directions**.

Every statistic is derived from the two arrays of directed distances, computed once per pair:

* ``assd`` = pooled mean ``(sum d(pred->ref) + sum d(ref->pred)) / (n_pred + n_ref)`` (LiTS /
  SLIVER07 definition, and MedPy 0.5.2's ``assd``, which averages the concatenated distances;
  older MedPy releases averaged the two directed means instead);
* ``rmsd`` = pooled root-mean-square of the same distances;
* ``msd`` = maximum of both directions (the symmetric Hausdorff distance, MedPy's ``hd``).

Speed: both masks are cropped to their joint bounding box padded with background (exact: the
padding is background, as outside the array), and the boundary is found with 12 logical ANDs of
shifted views (the 18-neighbourhood erosion as three separable 3x3 square erosions). Nearest neighbours (default method ``"kdtree"``): boundary points shared by both masks have
distance 0; every other point is first looked up at the voxel offsets nearest in mm (whole
distance shells; :data:`SEARCH_OFFSETS` of them, more while few points are left), taken in order
of increasing distance, so the first offset that lands on the other boundary gives the exact
nearest distance; the points with no boundary point that close go to a KD-tree
(``scipy.spatial.cKDTree``) over the other boundary's points in mm. As an alternative with
identical results, ``method="edt"`` takes an exact Euclidean distance transform
(``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``) of the cropped box.

Empty masks: :func:`surface_distances` raises :class:`EmptyMaskError` when either mask is empty
(no surface, distances undefined); the LiTS layer (:mod:`livseg.metrics.lits`) decides the penalty.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from livseg.preprocess.bbox import bounding_box

log = logging.getLogger("livseg.metrics.surface")

Method = Literal["kdtree", "edt"]

#: Voxel offsets always tried by the local nearest-neighbour search before a KD-tree.
SEARCH_OFFSETS = 1000
#: Voxel offsets tried at most (beyond SEARCH_OFFSETS only while few points are left).
_MAX_OFFSETS = 8000
#: Gathers per block of the local search.
_GATHER = 1 << 20


class EmptyMaskError(ValueError):
    """A surface metric was asked of an empty mask (no surface; distances undefined)."""


def _padded_crop(mask: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """``mask[box]`` with one voxel of background added on every side."""
    crop = np.zeros(tuple(s.stop - s.start + 2 for s in box), dtype=bool)
    crop[1:-1, 1:-1, 1:-1] = mask[box]
    return crop


def _boundary_of_padded(padded: np.ndarray) -> np.ndarray:
    """Boundary (mask XOR 18-neighbourhood erosion) of the core of a zero-padded mask.

    The 18-neighbourhood is the union of the three 3x3 squares in the coordinate planes through
    the voxel, so its erosion is the AND of three separable square erosions (12 ANDs, not 18).
    """
    p = padded
    ex = p[:, :, :-2] & p[:, :, 1:-1] & p[:, :, 2:]  # (z+2, y+2, x): along x
    ey = p[:, :-2, 1:-1] & p[:, 1:-1, 1:-1] & p[:, 2:, 1:-1]  # (z+2, y, x): along y
    eroded = ex[1:-1, :-2] & ex[1:-1, 1:-1] & ex[1:-1, 2:]  # y-x square
    eroded &= ex[:-2, 1:-1] & ex[1:-1, 1:-1] & ex[2:, 1:-1]  # z-x square
    eroded &= ey[:-2] & ey[1:-1] & ey[2:]  # z-y square
    return p[1:-1, 1:-1, 1:-1] & ~eroded


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a 3-D mask: ``mask XOR erosion(mask, 18-neighbourhood)``.

    Voxels outside the array count as background, so object voxels on the array's faces are
    boundary voxels (as ``scipy.ndimage.binary_erosion`` with ``border_value=0``).

    Args:
        mask: (Z, Y, X) array, nonzero = object.

    Returns:
        (Z, Y, X) bool array; all False for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"boundary expects a 3-D mask, got shape {mask.shape}")
    padded = np.pad(mask, 1)
    return _boundary_of_padded(padded)


@dataclass(frozen=True)
class SurfaceDistances:
    """Directed boundary-to-boundary distances of one (prediction, reference) pair, in mm.

    Attributes:
        pred_to_ref: (N_pred,) distance of every prediction boundary point to the nearest
            reference boundary point (mm).
        ref_to_pred: (N_ref,) distance of every reference boundary point to the nearest
            prediction boundary point (mm).
    """

    pred_to_ref: np.ndarray
    ref_to_pred: np.ndarray

    @property
    def n_pred(self) -> int:
        """Number of prediction boundary voxels."""
        return int(self.pred_to_ref.size)

    @property
    def n_ref(self) -> int:
        """Number of reference boundary voxels."""
        return int(self.ref_to_pred.size)

    @property
    def assd(self) -> float:
        """Average symmetric surface distance (mm), pooled over both directions (LiTS)."""
        total = float(self.pred_to_ref.sum()) + float(self.ref_to_pred.sum())
        return total / (self.n_pred + self.n_ref)

    @property
    def rmsd(self) -> float:
        """Root-mean-square symmetric surface distance (mm), pooled over both directions."""
        sq = float(np.square(self.pred_to_ref).sum()) + float(np.square(self.ref_to_pred).sum())
        return float(np.sqrt(sq / (self.n_pred + self.n_ref)))

    @property
    def msd(self) -> float:
        """Maximum symmetric surface distance = symmetric Hausdorff distance (mm)."""
        return max(float(self.pred_to_ref.max()), float(self.ref_to_pred.max()))

    @property
    def mean_pred_to_ref(self) -> float:
        """Mean directed distance prediction -> reference (mm); MedPy ``asd(pred, ref)``."""
        return float(self.pred_to_ref.mean())

    @property
    def mean_ref_to_pred(self) -> float:
        """Mean directed distance reference -> prediction (mm); MedPy ``asd(ref, pred)``."""
        return float(self.ref_to_pred.mean())


def _directed_kdtree(src_pts: np.ndarray, dst_pts: np.ndarray) -> np.ndarray:
    """Distance (mm) of each row of ``src_pts`` to its nearest row of ``dst_pts``."""
    tree = cKDTree(dst_pts, leafsize=32, balanced_tree=False, compact_nodes=False)
    dist, _ = tree.query(src_pts, k=1)
    return dist


@functools.lru_cache(maxsize=16)
def _search_offsets(spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The ~:data:`_MAX_OFFSETS` voxel offsets nearest in mm (whole shells), nearest first.

    Returns:
        ((K, 3) int offsets, (K,) distances in mm), zero excluded.
    """
    sp = np.asarray(spacing)
    reach = np.ceil(np.cbrt(_MAX_OFFSETS * sp.prod()) / sp).astype(int) + 1
    axes = [np.arange(-r, r + 1) for r in reach]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    dist = np.sqrt(((grid * sp) ** 2).sum(axis=1))
    order = np.argsort(dist, kind="stable")[1:]  # drop the zero offset
    grid, dist = grid[order], dist[order]
    # Complete shells only, and never past the box's reach (the cube's inscribed ball).
    limit = min(dist[min(_MAX_OFFSETS, dist.size) - 1], float((reach * sp).min()))
    keep = dist <= limit
    return grid[keep], dist[keep]


def _directed_local(
    src: np.ndarray, dst: np.ndarray, offsets: np.ndarray, dist: np.ndarray, spacing: np.ndarray
) -> np.ndarray:
    """Distance (mm) from each True voxel of ``src`` to the nearest True voxel of ``dst``.

    ``src`` and ``dst`` share one C-ordered, zero-padded grid at least as wide as the offsets
    reach, and no ``src`` voxel is a ``dst`` voxel. Offsets are tried nearest first, in blocks;
    the first hit of a point is its exact distance (every offset of that distance or less has been
    tried). Points with no hit go to a KD-tree.
    """
    flat = dst.ravel()
    pos = np.flatnonzero(src)
    out = np.empty(pos.size, dtype=np.float64)
    todo = np.arange(pos.size)
    steps = offsets @ (np.array(dst.strides) // dst.itemsize)
    kd_cost = 64 * int(np.count_nonzero(flat))  # a KD-tree's work, in gathers (measured)
    k0 = 0
    while todo.size and k0 < steps.size:
        if k0 >= SEARCH_OFFSETS and todo.size * (steps.size - k0) > kd_cost:
            break  # the points left are many and far: the KD-tree is cheaper
        k1 = min(steps.size, k0 + max(4, _GATHER // todo.size))
        hits = flat[pos[:, None] + steps[None, k0:k1]]
        first = hits.argmax(axis=1)
        found = hits[np.arange(first.size), first]
        out[todo[found]] = dist[k0 + first[found]]
        todo, pos = todo[~found], pos[~found]
        k0 = k1
    if todo.size:
        src_pts = np.column_stack(np.unravel_index(pos, src.shape)) * spacing
        out[todo] = _directed_kdtree(src_pts, np.argwhere(dst) * spacing)
    return out


def surface_distances(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    method: Method = "kdtree",
) -> SurfaceDistances:
    """Boundary distances of a mask pair, both directions, in mm.

    Both masks are cropped to their joint bounding box (padded with background), which gives the
    same result as the full volume.

    Args:
        pred: (Z, Y, X) predicted mask (nonzero = object).
        ref: (Z, Y, X) reference mask, same shape.
        spacing: (sz, sy, sx) voxel size in mm, in the array's axis order.
        method: "kdtree" (default: local offset search, then a KD-tree for the rest; module
            docstring) or "edt" (exact Euclidean distance transform of the cropped box); the
            results agree to rounding.

    Returns:
        The directed distances; every statistic (ASSD, RMSD, MSD...) is a property.

    Raises:
        EmptyMaskError: either mask is empty (no surface, distances undefined).
        ValueError: shapes differ, masks are not 3-D, the spacing is not 3 positive numbers, or
            the method is unknown.
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"masks must be 3-D and of equal shape, got {pred.shape} and {ref.shape}")
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or not np.all(sp > 0):
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing}")
    if method not in ("kdtree", "edt"):
        raise ValueError(f"method must be 'kdtree' or 'edt', got {method!r}")
    box = _joint_box(pred, ref)
    if method == "edt":
        bp = _boundary_of_padded(_padded_crop(pred, box))
        br = _boundary_of_padded(_padded_crop(ref, box))
        d_pr = ndimage.distance_transform_edt(~br, sampling=sp)[bp]
        d_rp = ndimage.distance_transform_edt(~bp, sampling=sp)[br]
        return SurfaceDistances(pred_to_ref=d_pr, ref_to_pred=d_rp)
    offsets, dist = _search_offsets(tuple(sp.tolist()))
    pad = np.abs(offsets).max(axis=0) if offsets.size else np.zeros(3, dtype=int)
    bp = _boundary_in_padded_box(pred, box, pad)
    br = _boundary_in_padded_box(ref, box, pad)
    differ = bp ^ br
    p_only, r_only = bp & differ, br & differ
    # Points on both boundaries have distance 0 both ways: no search needed.
    d_pr = np.zeros(int(np.count_nonzero(bp)))
    d_rp = np.zeros(int(np.count_nonzero(br)))
    d_pr[d_pr.size - int(np.count_nonzero(p_only)) :] = _directed_local(
        p_only, br, offsets, dist, sp
    )
    d_rp[d_rp.size - int(np.count_nonzero(r_only)) :] = _directed_local(
        r_only, bp, offsets, dist, sp
    )
    return SurfaceDistances(pred_to_ref=d_pr, ref_to_pred=d_rp)


def _joint_box(pred: np.ndarray, ref: np.ndarray) -> tuple[slice, ...]:
    """Joint bounding box of two masks; EmptyMaskError naming the empty one(s)."""
    has_p, has_r = bool(pred.any()), bool(ref.any())
    if not (has_p and has_r):
        which = (
            "prediction and reference"
            if not has_p and not has_r
            else ("prediction" if not has_p else "reference")
        )
        raise EmptyMaskError(f"surface distances are undefined: the {which} mask is empty")
    return bounding_box(pred | ref)


def _boundary_in_padded_box(
    mask: np.ndarray, box: tuple[slice, ...], pad: np.ndarray
) -> np.ndarray:
    """Boundary of ``mask[box]``, placed inside a zero array padded by ``pad`` voxels per axis."""
    core = _boundary_of_padded(_padded_crop(mask, box))
    pz, py, px = (int(p) for p in pad)
    out = np.zeros(tuple(n + 2 * q for n, q in zip(core.shape, (pz, py, px), strict=True)), bool)
    out[pz : pz + core.shape[0], py : py + core.shape[1], px : px + core.shape[2]] = core
    return out
