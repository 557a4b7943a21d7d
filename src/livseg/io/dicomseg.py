"""DICOM-SEG (Segmentation Storage) objects placed on the grid of their CT series.

Frames are placed by their own position (PerFrameFunctionalGroups > PlanePositionSequence >
ImagePositionPatient) in the reference volume's index space, never by their frame references
(which real files get wrong: in the RadCTTACEomics objects every frame references one slice).
The frame plane (ImageOrientationPatient) and pixel spacing must match the reference's axial
plane; frames may cover a sub-rectangle of it at an integer pixel offset. No resampling is done:
a SEG that does not lie on the reference grid is an :class:`~livseg.errors.InputError`.

Segment numbers map to label values with ``segment_labels`` (default: segment 1 -> 1). For the
LiTS convention, :func:`lits_label_from_segs` combines several SEG files (e.g. a liver SEG and a
tumour SEG) into one label volume: liver 1, tumour 2, the larger value winning where they
overlap.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livseg import LABEL_LIVER, LABEL_TUMOUR
from livseg.errors import InputError
from livseg.volume import Volume

log = logging.getLogger("livseg.io.dicomseg")

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_POSITION_TOL_VOXELS = 0.05
_LIVER_WORDS = re.compile(r"\bliver\b|\bhepar\b|\bhepatic parenchyma\b", re.I)
_TUMOUR_WORDS = re.compile(
    r"tumou?r|neoplasm|lesion|carcinoma|metasta|\bmass\b|\bhcc\b|cancer|nodule", re.I
)


@dataclass(frozen=True)
class SegmentInfo:
    """One entry of a SEG's SegmentSequence.

    Attributes:
        number: SegmentNumber.
        label: SegmentLabel ('' when absent).
        property_type: code meaning of SegmentedPropertyTypeCodeSequence ('' when absent).
    """

    number: int
    label: str
    property_type: str

    def lits_label(self) -> int | None:
        """1 for a liver segment, 2 for a tumour segment (by label/property words), else None."""
        text = f"{self.label} {self.property_type}"
        if _TUMOUR_WORDS.search(text):
            return LABEL_TUMOUR
        if _LIVER_WORDS.search(text):
            return LABEL_LIVER
        return None


def _read(path: Path, pixels: bool = True):
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a DICOM-SEG file")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{path}: not a readable DICOM file ({exc})") from exc
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        raise InputError(
            f"{path}: not a DICOM-SEG object (SOP class {ds.get('SOPClassUID', 'missing')})"
        )
    return ds


def read_segments(path: str | os.PathLike) -> list[SegmentInfo]:
    """The segments described in a DICOM-SEG file (header only).

    Raises:
        InputError: missing file, not DICOM, not a SEG, or no SegmentSequence.
    """
    path = Path(path)
    ds = _read(path, pixels=False)
    if "SegmentSequence" not in ds or len(ds.SegmentSequence) == 0:
        raise InputError(f"{path}: DICOM-SEG without a SegmentSequence")
    out = []
    for item in ds.SegmentSequence:
        prop = ""
        if "SegmentedPropertyTypeCodeSequence" in item and len(
            item.SegmentedPropertyTypeCodeSequence
        ):
            prop = str(item.SegmentedPropertyTypeCodeSequence[0].get("CodeMeaning", ""))
        out.append(
            SegmentInfo(int(item.SegmentNumber), str(item.get("SegmentLabel", "") or ""), prop)
        )
    return out


def guess_lits_segment_labels(path: str | os.PathLike) -> dict[int, int]:
    """Map every segment of a SEG to a LiTS label (1 liver, 2 tumour) from its label/property.

    Raises:
        InputError: a segment is neither recognisably liver nor tumour (the message says how to
            name the label explicitly).
    """
    mapping = {}
    for seg in read_segments(path):
        value = seg.lits_label()
        if value is None:
            raise InputError(
                f"{path}: cannot tell whether segment {seg.number} ('{seg.label}', "
                f"'{seg.property_type}') is liver or tumour; name it explicitly "
                "(CLI: --seg liver=FILE or --seg tumour=FILE)"
            )
        mapping[seg.number] = value
    return mapping


def _functional_group(item, shared, name: str):
    """First item of functional group ``name``: the frame's own, else the shared one, else None."""
    for source in (item, shared):
        if source is not None and name in source and len(source[name].value):
            return source[name].value[0]
    return None


def _frame_description(item, shared, f: int, path: Path):
    """(position (3,), segment number, orientation (6,), pixel spacing (2,)) of frame ``f``."""
    pos = _functional_group(item, shared, "PlanePositionSequence")
    seg = _functional_group(item, shared, "SegmentIdentificationSequence")
    orient = _functional_group(item, shared, "PlaneOrientationSequence")
    meas = _functional_group(item, shared, "PixelMeasuresSequence")
    if pos is None or "ImagePositionPatient" not in pos:
        raise InputError(f"{path}: frame {f + 1} has no PlanePositionSequence position")
    if seg is None:
        raise InputError(f"{path}: frame {f + 1} has no SegmentIdentificationSequence")
    if orient is None or meas is None:
        raise InputError(f"{path}: frame {f + 1} has no plane orientation or pixel spacing")
    return (
        np.array([float(v) for v in pos.ImagePositionPatient]),
        int(seg.ReferencedSegmentNumber),
        np.array([float(v) for v in orient.ImageOrientationPatient]),
        np.array([float(v) for v in meas.PixelSpacing]),
    )


def _frame_geometry(ds, path: Path):
    """Per-frame (position (3,), segment number) and the shared orientation/spacing."""
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    shared = (
        ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    )
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n_frames:
        raise InputError(
            f"{path}: DICOM-SEG without one PerFrameFunctionalGroupsSequence item "
            f"per frame ({n_frames} frames)"
        )
    frames = []
    iop = spacing = None
    for f, item in enumerate(per_frame):
        pos, seg_no, f_iop, f_sp = _frame_description(item, shared, f, path)
        if iop is None:
            iop, spacing = f_iop, f_sp
        elif not (np.allclose(f_iop, iop, atol=1e-4) and np.allclose(f_sp, spacing, rtol=1e-4)):
            raise InputError(f"{path}: frames with different orientations or pixel spacings")
        frames.append((pos, seg_no))
    return frames, iop, spacing


def _segment_mapping(segment_labels: Mapping[int, int] | None) -> dict[int, int]:
    mapping = dict(segment_labels) if segment_labels is not None else {1: LABEL_LIVER}
    for value in mapping.values():
        if not 0 < int(value) <= 255:
            raise ValueError(f"segment label values must be 1..255, got {value}")
    return mapping


def _frame_masks(ds, path: Path, n_frames: int) -> np.ndarray:
    """The (F, R, C) bool frames; fractional frames thresholded at half their maximum."""
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types
        raise InputError(f"{path}: cannot decode the SEG pixel data ({exc})") from exc
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.shape[0] != n_frames:
        raise InputError(
            f"{path}: {pixels.shape[0]} frames of pixel data for {n_frames} frame descriptions"
        )
    if str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
        threshold = float(ds.get("MaximumFractionalValue", 255)) / 2.0
        return pixels > threshold
    return pixels > 0


def _check_plane(path: Path, iop: np.ndarray, spacing: np.ndarray, reference: Volume) -> None:
    """The frames must lie in the reference's axial plane with its pixel spacing."""
    # reference axes in LPS (x, y, z) order
    ref_x = reference.direction[:, 2][::-1]
    ref_y = reference.direction[:, 1][::-1]
    if not (np.allclose(iop[:3], ref_x, atol=1e-4) and np.allclose(iop[3:], ref_y, atol=1e-4)):
        raise InputError(
            f"{path}: SEG frame orientation {iop.tolist()} differs from the reference's axial "
            f"plane {np.r_[ref_x, ref_y].round(6).tolist()}; resampling SEGs is not supported"
        )
    if not np.allclose(spacing, reference.spacing[1:], rtol=1e-4, atol=1e-5):
        raise InputError(
            f"{path}: SEG pixel spacing {spacing.tolist()} mm differs from the "
            f"reference's {list(reference.spacing[1:])} mm"
        )


def _frame_index(
    path: Path, f: int, pos: np.ndarray, inv: np.ndarray, frame_shape, volume_shape
) -> tuple[int, int, int]:
    """Index (k, j, i) of frame ``f``'s first pixel on the reference grid, checked.

    Args:
        pos: LPS (x, y, z) position of the frame (mm).
        inv: inverse of the reference's index -> LPS (z, y, x) affine, 4x4.
        frame_shape: (rows, columns) of the frame.
        volume_shape: (Z, Y, X) of the reference.

    Raises:
        InputError: the frame is off the grid, or does not fit inside the volume.
    """
    kji = (inv @ np.r_[pos[::-1], 1.0])[:3]
    idx = np.round(kji).astype(int)
    if np.any(np.abs(kji - idx) > _POSITION_TOL_VOXELS):
        raise InputError(
            f"{path}: frame {f + 1} at {pos.round(4).tolist()} mm is off the reference grid "
            f"(index {kji.round(3).tolist()} in (z, y, x)); was it drawn on another series?"
        )
    k, j, i = (int(v) for v in idx)
    rows, cols = frame_shape
    inside = (
        0 <= k < volume_shape[0]
        and 0 <= j <= volume_shape[1] - rows
        and 0 <= i <= volume_shape[2] - cols
    )
    if not inside:
        raise InputError(
            f"{path}: frame {f + 1} at {pos.round(4).tolist()} mm falls outside the reference "
            f"volume (index {[k, j, i]}, frame {rows}x{cols}, volume {volume_shape})"
        )
    return k, j, i


def read_dicom_seg(
    path: str | os.PathLike,
    reference: Volume,
    segment_labels: Mapping[int, int] | None = None,
) -> Volume:
    """Read a DICOM-SEG into a label Volume on the grid of ``reference``.

    Args:
        path: DICOM-SEG file (BINARY or FRACTIONAL; fractional frames are thresholded at half
            the MaximumFractionalValue).
        reference: the CT volume the SEG was drawn on (e.g. ``read_volume(series_folder)``).
        segment_labels: segment number -> label value (1..255). Default ``{1: 1}``. Segments not
            in the mapping are ignored (logged). Where segments overlap, the larger value wins.

    Returns:
        uint8 label Volume with the reference's shape and geometry.

    Raises:
        InputError: not a SEG; frame plane or pixel spacing differs from the reference's axial
            plane; a non-empty frame lies off the reference grid or outside it.
    """
    path = Path(path)
    mapping = _segment_mapping(segment_labels)
    ds = _read(path, pixels=True)
    frames, iop, ps = _frame_geometry(ds, path)
    masks = _frame_masks(ds, path, len(frames))
    _check_plane(path, iop, ps, reference)

    inv = np.linalg.inv(reference.affine_lps())
    out = np.zeros(reference.shape, dtype=np.uint8)
    rows, cols = masks.shape[1:]
    ignored: set[int] = set()
    for f, ((pos, seg_no), mask) in enumerate(zip(frames, masks, strict=True)):
        value = mapping.get(seg_no)
        if value is None:
            ignored.add(seg_no)
            continue
        if not mask.any():
            continue
        k, j, i = _frame_index(path, f, pos, inv, (rows, cols), out.shape)
        region = out[k, j : j + rows, i : i + cols]
        np.maximum(region, np.where(mask, np.uint8(value), np.uint8(0)), out=region)
    if ignored:
        log.warning(
            "%s: segment(s) %s ignored (not in the segment -> label mapping %s)",
            path,
            sorted(ignored),
            mapping,
        )
    log.info("%s: %d voxels labelled", path, int(np.count_nonzero(out)))
    return reference.with_array(out, kind="label")


SegSpec = tuple[str | os.PathLike, Mapping[int, int] | int | None]
"""A SEG file with its labels: a segment -> label mapping, one label for all its segments, or
None to guess liver/tumour from the segment descriptions."""


def lits_label_from_segs(reference: Volume, segs: Sequence[SegSpec]) -> Volume:
    """Combine DICOM-SEG files into one LiTS label volume on the reference grid.

    Args:
        reference: the CT volume the SEGs were drawn on.
        segs: ``(path, labels)`` pairs; ``labels`` is a mapping segment number -> value, a single
            value applied to every segment of that file (1 liver, 2 tumour), or None to guess
            from each segment's label and property type (liver -> 1, tumour words -> 2).

    Returns:
        uint8 label Volume: 0 background, 1 liver, 2 tumour (max where they overlap).

    Raises:
        InputError: as :func:`read_dicom_seg`, or a segment that cannot be recognised.
    """
    if not segs:
        raise ValueError("at least one DICOM-SEG file is needed")
    out = np.zeros(reference.shape, dtype=np.uint8)
    for path, labels in segs:
        if labels is None:
            mapping = guess_lits_segment_labels(path)
        elif isinstance(labels, int):
            mapping = {seg.number: int(labels) for seg in read_segments(path)}
        else:
            mapping = dict(labels)
        vol = read_dicom_seg(path, reference, mapping)
        np.maximum(out, vol.array, out=out)
    return reference.with_array(out, kind="label")
