"""Canonical orientation: permute and flip array axes (never resample).

livseg models work on arrays in one canonical orientation: axis codes **"LPS"** for the array's
(x, y, z) axes, i.e. the identity direction of :class:`livseg.volume.Volume`:

* array x (last axis) increases toward the patient's Left,
* array y (middle axis) toward Posterior,
* array z (first axis) toward Superior.

An axial slice ``array[k]`` is then shown in the usual radiological view (anterior at the top,
patient left on the image's right). For an oblique direction matrix, each array axis goes to the
patient axis it is closest to (the assignment of axes maximising the summed |cosines|); the
residual obliquity stays in the canonical ``direction``, so every voxel keeps its exact physical
position. :meth:`Reorientation.undo` maps results back to the input's own array layout, so outputs
are always written in the input geometry.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np

from livseg.volume import Volume

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reorientation:
    """The axis permutation and flips that take an input array to the canonical layout.

    Spatial axes are the **last three** axes of an array, in (z, y, x) order, so (Z, Y, X)
    volumes and e.g. (C, Z, Y, X) probability maps are both handled.

    Attributes:
        perm: ``perm[d]`` is the input axis that becomes canonical axis ``d`` (0 = z, 1 = y,
            2 = x).
        flip: ``flip[d]`` is True when canonical axis ``d`` is reversed relative to the input.
        input_shape: (Z, Y, X) shape of the input array.
        input_spacing: Input spacing (sz, sy, sx) in mm.
        input_origin: Input origin, (z, y, x) LPS order, mm.
        input_direction: Input 3x3 direction matrix (Volume convention).
    """

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    input_shape: tuple[int, int, int]
    input_spacing: tuple[float, float, float]
    input_origin: tuple[float, float, float]
    input_direction: tuple[tuple[float, float, float], ...]

    @property
    def is_identity(self) -> bool:
        """True when the input already is canonical (no permutation, no flip)."""
        return self.perm == (0, 1, 2) and not any(self.flip)

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) shape of the canonical array."""
        return tuple(self.input_shape[p] for p in self.perm)  # type: ignore[return-value]

    def _axes(self, ndim: int) -> tuple[int, list[int]]:
        if ndim < 3:
            raise ValueError(f"array must have at least 3 axes (..., z, y, x), got {ndim}")
        lead = ndim - 3
        return lead, list(range(lead))

    def apply(self, array):
        """Input layout -> canonical layout.

        Args:
            array: (..., Z, Y, X) numpy array in the input layout, or a :class:`Volume` with the
                input geometry.

        Returns:
            A view/copy of the array (..., Z', Y', X') in the canonical layout, or for a Volume the
            canonical Volume (geometry updated, physical voxel positions unchanged).
        """
        if isinstance(array, Volume):
            return self._apply_volume(array)
        arr = np.asarray(array)
        lead, axes = self._axes(arr.ndim)
        if tuple(arr.shape[lead:]) != self.input_shape:
            raise ValueError(
                f"array spatial shape {arr.shape[lead:]} differs from the input "
                f"shape {self.input_shape} of this reorientation"
            )
        out = np.transpose(arr, axes + [lead + p for p in self.perm])
        flips = tuple(lead + d for d in range(3) if self.flip[d])
        if flips:
            out = np.flip(out, axis=flips)
        return np.ascontiguousarray(out)

    def undo(self, array):
        """Canonical layout -> input layout; ``undo(apply(a))`` equals ``a`` exactly.

        Args:
            array: (..., Z', Y', X') numpy array in the canonical layout, or a canonical
                :class:`Volume` (its geometry is replaced by the input geometry).

        Returns:
            The array (..., Z, Y, X) in the input layout, or a Volume with the input geometry.
        """
        if isinstance(array, Volume):
            arr = self.undo(array.array)
            return Volume(
                arr,
                self.input_spacing,
                self.input_origin,
                np.asarray(self.input_direction),
                array.kind,
            )
        arr = np.asarray(array)
        lead, axes = self._axes(arr.ndim)
        if tuple(arr.shape[lead:]) != self.canonical_shape:
            raise ValueError(
                f"array spatial shape {arr.shape[lead:]} differs from the canonical "
                f"shape {self.canonical_shape} of this reorientation"
            )
        flips = tuple(lead + d for d in range(3) if self.flip[d])
        if flips:
            arr = np.flip(arr, axis=flips)
        inv = [0, 0, 0]
        for d, p in enumerate(self.perm):
            inv[p] = d
        return np.ascontiguousarray(np.transpose(arr, axes + [lead + i for i in inv]))

    def canonical_geometry(
        self,
    ) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
        """(spacing, origin, direction) of the canonical array (Volume conventions)."""
        return _permuted_geometry(
            self.perm,
            self.flip,
            self.input_shape,
            self.input_spacing,
            self.input_origin,
            np.asarray(self.input_direction),
        )

    def _apply_volume(self, volume: Volume) -> Volume:
        if volume.shape != self.input_shape:
            raise ValueError(
                f"volume shape {volume.shape} differs from the input shape "
                f"{self.input_shape} of this reorientation"
            )
        # the volume's own geometry (a label may differ from its image by rounding)
        spacing, origin, direction = _permuted_geometry(
            self.perm, self.flip, volume.shape, volume.spacing, volume.origin, volume.direction
        )
        return Volume(self.apply(volume.array), spacing, origin, direction, volume.kind)


def _permuted_geometry(perm, flip, shape, spacing, origin, direction):
    """Geometry of an array after transposing by ``perm`` and flipping canonical axes ``flip``."""
    d_in = np.asarray(direction, dtype=np.float64)
    sp_in = np.asarray(spacing, dtype=np.float64)
    new_dir = np.empty((3, 3))
    new_spacing = []
    corner = np.zeros(3)  # input index of canonical voxel (0, 0, 0)
    for d, p in enumerate(perm):
        sign = -1.0 if flip[d] else 1.0
        new_dir[:, d] = sign * d_in[:, p]
        new_spacing.append(float(sp_in[p]))
        if flip[d]:
            corner[p] = shape[p] - 1
    new_origin = np.asarray(origin, dtype=np.float64) + d_in @ (sp_in * corner)
    return tuple(new_spacing), tuple(float(o) for o in new_origin), new_dir


def canonical_reorientation(volume: Volume) -> Reorientation:
    """The :class:`Reorientation` taking ``volume`` to the canonical ("LPS") layout.

    Each array axis is assigned to the patient axis it is most aligned with; for oblique
    directions the permutation maximising the summed absolute cosines is chosen, so two array
    axes never map to the same patient axis.
    """
    direc = np.asarray(volume.direction, dtype=np.float64)
    # direc[d, a]: component along patient axis d (z, y, x order) of array axis a.
    best, best_score = None, -np.inf
    for perm in itertools.permutations(range(3)):
        score = sum(abs(direc[d, perm[d]]) for d in range(3))
        if score > best_score + 1e-12:
            best, best_score = perm, score
    assert best is not None
    flip = tuple(bool(direc[d, best[d]] < 0) for d in range(3))
    return Reorientation(
        perm=tuple(int(p) for p in best),  # type: ignore[arg-type]
        flip=flip,  # type: ignore[arg-type]
        input_shape=volume.shape,
        input_spacing=volume.spacing,
        input_origin=volume.origin,
        input_direction=tuple(tuple(float(v) for v in row) for row in direc),
    )


def canonical_view(volume: Volume) -> tuple[np.ndarray, Reorientation]:
    """A (Z, Y, X) *view* (no copy) of ``volume.array`` in the canonical LPS layout.

    The cheap form of :func:`to_canonical` for large volumes: only the array is returned, as a
    transposed/flipped view, with the reorientation that produced it.

    Returns:
        (view, reorientation); ``reorientation.undo`` maps canonical arrays back.
    """
    reo = canonical_reorientation(volume)
    view = np.transpose(volume.array, reo.perm)
    flips = tuple(d for d in range(3) if reo.flip[d])
    if flips:
        view = np.flip(view, axis=flips)
    return view, reo


def to_canonical(volume: Volume) -> tuple[Volume, Reorientation]:
    """Permute/flip a volume's axes into the canonical "LPS" layout (no resampling).

    Args:
        volume: Any :class:`Volume` (image or label).

    Returns:
        (canonical volume, reorientation). The canonical volume's direction is the identity for
        axis-aligned inputs (close to it for oblique ones), its spacing and origin are permuted
        and shifted so that every voxel keeps its physical LPS position. Use
        ``reorientation.undo(array_or_volume)`` to return to the input layout.
    """
    reo = canonical_reorientation(volume)
    if not reo.is_identity:
        logger.debug(
            "reorienting %s -> LPS (perm %s, flip %s)",
            volume.orientation_codes(),
            reo.perm,
            reo.flip,
        )
    return reo.apply(volume), reo
