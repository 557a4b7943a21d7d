"""Volume-overlap metrics of two binary masks: Dice, Jaccard, VOE, RVD.

Definitions (|A| = number of voxels of A; P = prediction, R = reference):

* Dice ``D = 2 |P & R| / (|P| + |R|)``;
* Jaccard ``J = |P & R| / |P | R| = D / (2 - D)``;
* volume overlap error ``VOE = 1 - J``;
* relative volume difference ``RVD = (|P| - |R|) / |R|``, **signed** (positive = over-segmentation).
  This is MedPy's ``ravd(pred, ref)``. (The official LiTS scorer calls ``ravd(ref, pred)``, i.e.
  ``(|R| - |P|) / |P|``; livseg follows the definition written in the LiTS paper and our SPEC.)

Empty masks: when both masks are empty the overlap ratios are 0/0; the functions below return the
caller's ``empty`` value (default 1.0 for Dice and Jaccard: two empty masks agree perfectly). RVD
with an empty reference raises :class:`livseg.metrics.surface.EmptyMaskError`. The LiTS rules for
empty masks (penalties) live in :mod:`livseg.metrics.lits`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from livseg.metrics.surface import EmptyMaskError


@dataclass(frozen=True)
class OverlapCounts:
    """Voxel counts of a mask pair.

    Attributes:
        intersection: |P & R| (voxels).
        n_pred: |P| (voxels).
        n_ref: |R| (voxels).
    """

    intersection: int
    n_pred: int
    n_ref: int

    @classmethod
    def of(cls, pred: np.ndarray, ref: np.ndarray) -> OverlapCounts:
        """Count the voxels of two same-shape masks (nonzero = object)."""
        pred = np.asarray(pred, dtype=bool)
        ref = np.asarray(ref, dtype=bool)
        if pred.shape != ref.shape:
            raise ValueError(f"mask shapes differ: {pred.shape} vs {ref.shape}")
        return cls(
            int(np.count_nonzero(pred & ref)),
            int(np.count_nonzero(pred)),
            int(np.count_nonzero(ref)),
        )

    def dice(self, empty: float = 1.0) -> float:
        """Dice coefficient in [0, 1]; ``empty`` when both masks are empty."""
        total = self.n_pred + self.n_ref
        return empty if total == 0 else 2.0 * self.intersection / total

    def jaccard(self, empty: float = 1.0) -> float:
        """Jaccard index (IoU) in [0, 1]; ``empty`` when both masks are empty."""
        union = self.n_pred + self.n_ref - self.intersection
        return empty if union == 0 else self.intersection / union

    def voe(self, empty: float = 0.0) -> float:
        """Volume overlap error ``1 - Jaccard``; ``empty`` when both masks are empty."""
        union = self.n_pred + self.n_ref - self.intersection
        return empty if union == 0 else 1.0 - self.intersection / union

    def rvd(self) -> float:
        """Signed relative volume difference ``(|P| - |R|) / |R|``.

        Raises:
            EmptyMaskError: the reference is empty (RVD undefined).
        """
        if self.n_ref == 0:
            raise EmptyMaskError("relative volume difference is undefined: the reference is empty")
        return (self.n_pred - self.n_ref) / self.n_ref


def dice(pred: np.ndarray, ref: np.ndarray, empty: float = 1.0) -> float:
    """Dice of two masks (see :class:`OverlapCounts`); ``empty`` if both are empty."""
    return OverlapCounts.of(pred, ref).dice(empty)


def jaccard(pred: np.ndarray, ref: np.ndarray, empty: float = 1.0) -> float:
    """Jaccard index of two masks; ``empty`` if both are empty."""
    return OverlapCounts.of(pred, ref).jaccard(empty)


def voe(pred: np.ndarray, ref: np.ndarray, empty: float = 0.0) -> float:
    """Volume overlap error ``1 - Jaccard``; ``empty`` if both are empty."""
    return OverlapCounts.of(pred, ref).voe(empty)


def rvd(pred: np.ndarray, ref: np.ndarray) -> float:
    """Signed relative volume difference ``(|pred| - |ref|) / |ref|``.

    Raises:
        EmptyMaskError: ``ref`` is empty.
    """
    return OverlapCounts.of(pred, ref).rvd()


def far_false_positive_ml(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, float, float],
    distance_mm: float = 20.0,
) -> float:
    """Volume (ml) of the prediction lying more than ``distance_mm`` from the reference.

    Not a LiTS metric: it measures what Dice hides, labels far from the structure (a heart or a
    kidney labelled liver). A voxel counts when the Euclidean distance (mm, voxel centres) from it
    to the nearest reference voxel exceeds ``distance_mm``.

    Args:
        pred: Binary prediction (Z, Y, X).
        ref: Binary reference, same shape.
        spacing: (sz, sy, sx) in mm.
        distance_mm: Distance beyond which a predicted voxel is "far" (mm).

    Returns:
        The far volume in ml; with an empty reference, the whole prediction's volume.
    """
    from scipy import ndimage

    from livseg.preprocess.bbox import bounding_box

    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {ref.shape}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    box = bounding_box(pred)
    if box is None:
        return 0.0
    if not ref.any():
        return int(np.count_nonzero(pred)) * voxel_ml
    # distances only matter inside the prediction's box, widened so no nearer reference is cut
    pad = [int(np.ceil(distance_mm / s)) + 1 for s in spacing]
    wide = tuple(
        slice(max(b.start - p, 0), min(b.stop + p, n))
        for b, p, n in zip(box, pad, pred.shape, strict=True)
    )
    sub_ref = ref[wide]
    if not sub_ref.any():  # the nearest reference is farther than the pad: all of it is far
        return int(np.count_nonzero(pred)) * voxel_ml
    dist = ndimage.distance_transform_edt(~sub_ref, sampling=spacing)
    far = pred[wide] & (dist > distance_mm)
    return int(np.count_nonzero(far)) * voxel_ml
