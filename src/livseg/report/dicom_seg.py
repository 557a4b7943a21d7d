"""DICOM-SEG output referencing the input CT series (highdicom).

Two binary segments: 1 "Liver" (label >= 1, tumour voxels included, the LiTS convention) and
2 "Liver tumour" (label == 2). Each frame is matched to its source CT image by *position*:
every pixel centre of the source image is mapped through the label volume's geometry to a voxel
index, so the output is right whatever order or orientation the reader gave the volume. Source
images that do not lie on the label volume's grid (e.g. a stray slice a reader dropped) are left
out with a warning. Empty frames are omitted; a segment with no voxels at all is left out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from livseg import __version__
from livseg.errors import InputError, LivsegError
from livseg.io.atomic import atomic_path, check_writable
from livseg.volume import Volume

log = logging.getLogger("livseg.report.dicom_seg")

_TOL_VOXEL = 0.1
"""Largest accepted distance (in voxels) between a source pixel and the label grid."""


def _read_series(series_dir: Path) -> dict[str, list]:
    """Full datasets of each image series in ``series_dir``, by SeriesInstanceUID.

    The folder is scanned with :func:`livseg.io.dicom.scan_dicom_folder` (its one rule for which
    files count); only single-frame images with a valid image plane are kept, in path order.

    Raises:
        InputError: the folder is empty or holds no DICOM file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    from livseg.io.dicom import scan_dicom_folder

    groups: dict[str, list] = {}
    for series in scan_dicom_folder(series_dir):
        for sl in series.slices:
            try:
                ds = pydicom.dcmread(sl.path)
            except (InvalidDicomError, OSError, ValueError) as exc:
                log.debug("%s: skipped, unreadable (%s)", sl.path, exc)
                continue
            if "PixelData" in ds:
                groups.setdefault(series.uid, []).append(ds)
    return groups


def _on_grid(base, step_c, step_r, frame_shape: tuple[int, int], shape) -> bool:
    """True when a frame (first pixel at index ``base``, one column / one row further at
    ``step_c`` / ``step_r``) lies on the voxel grid of a volume of ``shape``, inside it."""
    rows, cols = frame_shape
    corners = [
        base,
        base + step_c * (cols - 1),
        base + step_r * (rows - 1),
        base + step_c * (cols - 1) + step_r * (rows - 1),
    ]
    for c in corners:
        if np.abs(c - np.round(c)).max() > _TOL_VOXEL:
            return False
        if np.any(np.round(c) < 0) or np.any(np.round(c) > np.asarray(shape) - 1):
            return False
    return not any(
        np.abs(s - np.round(s)).max() > _TOL_VOXEL / max(rows, cols) for s in (step_c, step_r)
    )


def frame_indices(ds, labels: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Voxel indices (k, j, i), each (Rows, Columns), of a source image's pixels in ``labels``.

    Returns:
        The three int arrays, or None when the image does not lie on the label grid.
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])  # LPS x, y, z
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    row_cos, col_cos = iop[:3], iop[3:]
    dr, dc = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
    aff = labels.affine_lps()
    inv = np.linalg.inv(aff[:3, :3])
    org = np.asarray(labels.origin)

    def to_index(lps_xyz: np.ndarray) -> np.ndarray:
        return inv @ (lps_xyz[::-1] - org)

    base = to_index(ipp)
    step_c = inv @ (row_cos * dc)[::-1]  # one column to the right
    step_r = inv @ (col_cos * dr)[::-1]  # one row down
    if not _on_grid(base, step_c, step_r, (rows, cols), labels.shape):
        return None
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    idx = [np.rint(base[a] + step_c[a] * c + step_r[a] * r).astype(np.intp) for a in range(3)]
    return idx[0], idx[1], idx[2]


def _best_series(
    groups: dict[str, list], labels: Volume, series_uid: str | None, series_dir: Path
) -> list[tuple]:
    """The (dataset, frame indices) of the series with most images on the label grid.

    Raises:
        InputError: ``series_uid`` not in the folder, or no image on the label grid.
    """
    if series_uid is not None:
        if series_uid not in groups:
            raise InputError(f"{series_dir}: no DICOM series with SeriesInstanceUID {series_uid}")
        groups = {series_uid: groups[series_uid]}
    best: list[tuple] = []
    skipped = 0
    for datasets in groups.values():
        matched = [(ds, idx) for ds in datasets if (idx := frame_indices(ds, labels)) is not None]
        if len(matched) > len(best):
            best, skipped = matched, len(datasets) - len(matched)
    if not best:
        raise InputError(
            f"{series_dir}: no DICOM image of this folder lies on the label grid; "
            "cannot write a DICOM-SEG referencing it"
        )
    if skipped:
        log.warning(
            "%s: %d image(s) of the series are not on the label grid and are not "
            "referenced by the DICOM-SEG",
            series_dir,
            skipped,
        )
    return best


def _segments(hd, codes, frames: np.ndarray, path: Path) -> tuple[list, np.ndarray]:
    """Segment descriptions and the (F, R, C, S) uint8 pixel array of the non-empty segments.

    Raises:
        LivsegError: both segments are empty (no liver).
    """
    masks = {1: frames >= 1, 2: frames == 2}
    algo = hd.AlgorithmIdentificationSequence(
        name="livseg", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    names = {
        1: ("Liver", codes.SCT.Organ, codes.SCT.Liver),
        2: ("Liver tumour", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm),
    }
    descs = []
    seg_arrays = []
    for number in (1, 2):
        if not masks[number].any():
            log.info(
                "%s: segment %r is empty and left out of the DICOM-SEG", path, names[number][0]
            )
            continue
        label, cat, typ = names[number]
        descs.append(
            hd.seg.SegmentDescription(
                segment_number=len(descs) + 1,
                segment_label=label,
                segmented_property_category=cat,
                segmented_property_type=typ,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algo,
            )
        )
        seg_arrays.append(masks[number])
    if not descs:
        raise LivsegError(
            f"{path}: no liver was found, so there is nothing to store in a "
            "DICOM-SEG (the label NIfTI and measurements are still written)"
        )
    return descs, np.stack(seg_arrays, axis=-1).astype(np.uint8)


def write_dicom_seg(
    labels: Volume,
    series_dir: str | Path,
    path: str | Path,
    *,
    overwrite: bool = False,
    series_description: str = "livseg liver/tumour",
    series_number: int = 901,
    series_uid: str | None = None,
) -> Path:
    """Write a DICOM-SEG of ``labels`` referencing the CT series in ``series_dir``.

    Args:
        labels: label Volume (0/1/2) in the geometry the series was read with.
        series_dir: folder of the source DICOM series (the input of ``livseg segment``); its
            files are found as :func:`livseg.io.dicom.dicom_files` says.
        path: output ``.dcm`` path.
        overwrite: replace an existing file.
        series_description: SeriesDescription of the SEG.
        series_number: SeriesNumber of the SEG.
        series_uid: SeriesInstanceUID of the source series when the folder holds several (the
            one ``livseg segment --series`` read); default: the series with most images on the
            label grid.

    Returns:
        The written path.

    Raises:
        InputError: ``series_dir`` holds no DICOM image on the label grid.
        LivsegError: highdicom is not installed, or the label volume has no liver voxels.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    series_dir, path = Path(series_dir), Path(path)
    check_writable(path, overwrite)
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise LivsegError(
            f"{path}: writing DICOM-SEG needs highdicom (pip install 'livseg[dicomseg]')"
        ) from exc
    if not series_dir.is_dir():
        raise InputError(f"{series_dir}: --dicom-seg needs a DICOM series folder as input")
    best = _best_series(_read_series(series_dir), labels, series_uid, series_dir)
    arr = labels.array
    frames = np.stack([arr[k, j, i] for _ds, (k, j, i) in best])  # (F, R, C)
    descs, pixel_array = _segments(hd, codes, frames, path)  # (F, R, C, S)
    seg = hd.seg.Segmentation(
        source_images=[ds for ds, _ in best],
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="livseg",
        manufacturer_model_name="livseg",
        software_versions=__version__,
        device_serial_number="0",
        series_description=series_description,
    )
    with atomic_path(path, overwrite) as tmp:
        seg.save_as(tmp)
    log.debug("DICOM-SEG %s: %d frames, %d segments", path, len(best), len(descs))
    return path
