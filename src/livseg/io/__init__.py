"""Reading and writing CT volumes and label maps with their exact geometry.

Formats, chosen by the path:

* a **folder** is a DICOM series (:mod:`livseg.io.dicom`; ``series_uid`` picks one when the folder
  holds several);
* ``.nii`` / ``.nii.gz``: NIfTI through nibabel (:mod:`livseg.io.nifti`), geometry from the sform
  (else the qform), converted exactly to and from livseg's reversed-LPS geometry;
* ``.nrrd`` / ``.nhdr`` / ``.mha`` / ``.mhd``: through SimpleITK (:mod:`livseg.io.itk`); ``.nhdr`` and
  ``.mhd`` (detached data files) are read-only.

DICOM-SEG objects are read onto their CT grid by :func:`read_dicom_seg`
(:mod:`livseg.io.dicomseg`). Dataset layouts (LiTS, MSD/nnU-Net, CSV/JSON lists) are in
:mod:`livseg.io.datasets`.

**Image or label** (``kind=None``): a DICOM series is an image. A file is a label when both

1. its file name or its parent folder's name contains ``seg``, ``label``, ``mask``, ``truth`` or
   ``annot`` (case-insensitive; so ``segmentation-3.nii``, ``labelsTr/liver_3.nii.gz``), and
2. its voxels are integers (integer type, or float holding whole numbers) all in {0, 1, 2};

otherwise it is an image. Pass ``kind="image"`` or ``kind="label"`` to decide explicitly; an
explicit label must hold whole numbers in 0..255 (no NaN). Images are float32 HU, labels uint8.

**In memory** (:func:`as_volume`, used by :func:`livseg.segment`): a :class:`~livseg.volume.Volume`,
a nibabel image, a SimpleITK image, or a numpy array with its ``spacing`` (Z, Y, X order) or its
NIfTI ``affine`` (the array then in nibabel's (i, j, k) order) becomes a Volume with the same
checks as a file.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livseg.errors import InputError
from livseg.io.atomic import atomic_path, check_writable
from livseg.io.dicom import read_dicom_series
from livseg.io.dicomseg import lits_label_from_segs, read_dicom_seg
from livseg.io.itk import is_itk, itk_geometry, read_itk, read_itk_header, write_itk
from livseg.io.nifti import (
    affine_to_geometry,
    is_nifti,
    read_nifti,
    read_nifti_header,
    write_nifti,
)
from livseg.volume import Kind, Volume

__all__ = [
    "READABLE_SUFFIXES",
    "SEGMENT_SUFFIX",
    "WRITABLE_SUFFIXES",
    "VolumeHeader",
    "as_volume",
    "convert",
    "guess_kind",
    "lits_label_from_segs",
    "read_dicom_seg",
    "read_dicom_series",
    "read_header",
    "read_volume",
    "write_volume",
]

log = logging.getLogger("livseg.io")

SEGMENT_SUFFIX = "_seg"
"""Suffix ``livseg segment`` adds to an input's name for its label file (``<name>_seg.nii.gz``)."""
READABLE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
WRITABLE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
_LABEL_NAME = re.compile(r"seg|label|mask|truth|annot", re.I)
_INT16 = np.iinfo(np.int16)


def _check_file_path(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: file or folder not found")
    if not (is_nifti(path) or is_itk(path)):
        raise InputError(
            f"{path}: unsupported file type; livseg reads {', '.join(READABLE_SUFFIXES)} files "
            "and DICOM series folders (pass the folder, not a single .dcm file)"
        )


def guess_kind(path: str | os.PathLike, array: np.ndarray) -> Kind:
    """Decide image or label by the rule in the module docstring.

    Args:
        path: the file (its name and its parent folder's name are looked at).
        array: its voxels.

    Returns:
        "label" or "image".
    """
    path = Path(path)
    if not (_LABEL_NAME.search(path.name) or _LABEL_NAME.search(path.parent.name)):
        return "image"
    if not _whole_numbers(array):
        return "image"
    # whole numbers within [0, 2] are exactly the values {0, 1, 2}
    return "label" if array.size and array.min() >= 0 and array.max() <= 2 else "image"


def _whole_numbers(array: np.ndarray) -> bool:
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return True
    if not np.issubdtype(array.dtype, np.floating):
        return False
    return bool(np.all(np.isfinite(array)) and np.all(array == np.round(array)))


def _make_volume(
    array: np.ndarray, spacing, origin, direction, kind: Kind | None, path: Path
) -> Volume:
    if array.size == 0:
        raise InputError(f"{path}: the volume is empty (shape {array.shape})")
    if kind is None:
        kind = guess_kind(path, array)
        log.debug("%s: read as %s (guessed)", path, kind)
    if kind == "label":
        if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
            raise InputError(f"{path}: label volume contains NaN values")
        if not _whole_numbers(array):
            raise InputError(f"{path}: label volume holds non-integer values")
        lo, hi = array.min(), array.max()
        if lo < 0 or hi > 255:
            raise InputError(f"{path}: label values must lie in 0..255, found {lo}..{hi}")
        return Volume(array.astype(np.uint8, copy=False), spacing, origin, direction, "label")
    if kind != "image":
        raise ValueError(f"kind must be None, 'image' or 'label', got {kind!r}")
    if np.issubdtype(array.dtype, np.floating):
        n_bad = int(np.count_nonzero(~np.isfinite(array)))
        if n_bad:
            log.warning("%s: %d non-finite voxel value(s) in the image", path, n_bad)
    return Volume(array.astype(np.float32, copy=False), spacing, origin, direction, "image")


def read_volume(
    path: str | os.PathLike, kind: Kind | None = None, series_uid: str | None = None
) -> Volume:
    """Read a CT image or a label map with its geometry.

    Args:
        path: a NIfTI/NRRD/MHA file, or a folder holding a DICOM series.
        kind: "image", "label", or None to guess (rule in the module docstring; DICOM folders
            are images).
        series_uid: SeriesInstanceUID to read when a DICOM folder holds several series.

    Returns:
        Volume (Z, Y, X): float32 HU image, or uint8 label.

    Raises:
        InputError: missing path, unsupported extension, corrupt or truncated file, 2-D or
            multi-volume data, NaN or non-integer label values, DICOM problems (see
            :func:`livseg.io.dicom.read_dicom_series`).
    """
    path = Path(path)
    if path.is_dir():
        if kind == "label":
            raise InputError(
                f"{path}: a DICOM series folder is read as an image; for a "
                "DICOM-SEG use read_dicom_seg"
            )
        return read_dicom_series(path, series_uid)
    _check_file_path(path)
    reader = read_nifti if is_nifti(path) else read_itk
    array, spacing, origin, direction, _ = reader(path)
    volume = _make_volume(array, spacing, origin, direction, kind, path)
    log.debug("%s: %r", path, volume)
    return volume


def _spatial(array: np.ndarray, source: str) -> np.ndarray:
    """The 3-D volume of ``array`` (trailing singleton dimensions dropped), numeric."""
    if array.ndim > 3 and all(int(n) == 1 for n in array.shape[3:]):
        array = array[(slice(None),) * 3 + (0,) * (array.ndim - 3)]
    if array.ndim != 3:
        raise InputError(
            f"{source}: {array.ndim}-D array of shape {array.shape}; a single 3-D volume is needed"
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise InputError(f"{source}: voxels of type {array.dtype} are not numbers")
    return array


def _from_array(array, spacing, affine, kind: Kind, source: str) -> Volume:
    array = _spatial(np.asarray(array), source)
    if (spacing is None) == (affine is None):
        raise InputError(
            f"{source}: a numpy array needs exactly one of spacing=(sz, sy, sx) mm (array in "
            "(Z, Y, X) order) or affine=4x4 NIfTI affine (array in nibabel's (i, j, k) order)"
        )
    if affine is not None:
        geometry = affine_to_geometry(np.asarray(affine, dtype=np.float64), source)
        return _make_volume(array.transpose(2, 1, 0), *geometry, kind, source)
    sp = np.asarray(spacing, dtype=np.float64).ravel()
    if sp.size != 3 or not np.all(np.isfinite(sp)) or sp.min() <= 0:
        raise InputError(f"{source}: spacing must be three positive mm values, got {spacing}")
    return _make_volume(array, tuple(sp.tolist()), (0.0, 0.0, 0.0), np.eye(3), kind, source)


def as_volume(
    data, *, spacing=None, affine=None, kind: Kind = "image", source: str | None = None
) -> Volume:
    """Any supported CT (or label) input as a :class:`~livseg.volume.Volume`.

    Args:
        data: a file path or DICOM folder (read by :func:`read_volume`), a Volume, a nibabel
            image, a SimpleITK image, or a numpy array.
        spacing: for a numpy array (Z, Y, X): its voxel size (sz, sy, sx) in mm; origin 0 and
            identity direction are assumed.
        affine: for a numpy array in nibabel's (i, j, k) order (``img.get_fdata()``): its 4x4
            NIfTI (RAS) affine, as ``img.affine``.
        kind: "image" (float32 HU) or "label" (uint8).
        source: name of the input in messages (default: the path or the type).

    Returns:
        The Volume (Z, Y, X) with its geometry.

    Raises:
        InputError: unreadable or missing file, not 3-D, not numbers, empty, a label volume
            given as an image, missing or doubled ``spacing``/``affine`` for an array, or an
            unsupported type.
    """
    if isinstance(data, (str, os.PathLike)):
        return read_volume(data, kind=kind)
    src = source or f"<{type(data).__module__.split('.')[0]}.{type(data).__name__}>"
    if isinstance(data, Volume):
        if data.kind != kind:
            raise InputError(f"{src}: a {data.kind} volume was given where a {kind} is needed")
        return data
    if isinstance(data, np.ndarray):
        return _from_array(data, spacing, affine, kind, src)
    if spacing is not None or affine is not None:
        raise InputError(f"{src}: spacing/affine are for numpy arrays; this input has its own")
    if hasattr(data, "affine") and hasattr(data, "dataobj"):  # nibabel spatial image
        array = _spatial(np.asanyarray(data.dataobj), src)
        geometry = affine_to_geometry(np.asarray(data.affine, dtype=np.float64), src)
        return _make_volume(np.asarray(array).transpose(2, 1, 0), *geometry, kind, src)
    if type(data).__module__.startswith("SimpleITK"):
        import SimpleITK as sitk

        if data.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"{src}: several components per voxel; a scalar volume is needed")
        array = _spatial(sitk.GetArrayFromImage(data), src)  # (Z, Y, X)
        geometry = itk_geometry(
            data.GetSpacing(), data.GetOrigin(), data.GetDirection(), data.GetDimension()
        )
        return _make_volume(array, *geometry, kind, src)
    raise InputError(
        f"{src}: unsupported input; give a path, a livseg Volume, a nibabel or SimpleITK "
        "image, or a numpy array with spacing or affine"
    )


@dataclass(frozen=True)
class VolumeHeader:
    """Geometry of a volume file read from its header only.

    Attributes:
        path: the file.
        shape: (Z, Y, X).
        spacing: (sz, sy, sx) mm.
        origin: (oz, oy, ox) LPS mm.
        direction: 3x3 reversed-LPS direction.
        dtype: on-disk voxel type.
    """

    path: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    dtype: str

    def geometry(self) -> Volume:
        """A voxel-less stand-in Volume (read-only zero array) for geometry comparisons."""
        zeros = np.broadcast_to(np.zeros((), dtype=np.uint8), self.shape)
        return Volume(zeros, self.spacing, self.origin, self.direction, "label")


def read_header(path: str | os.PathLike) -> VolumeHeader:
    """Read the geometry of a NIfTI/NRRD/MHA file without its voxels (cheap).

    Raises:
        InputError: missing, unsupported or unreadable file, or not 3-D.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: header-only reading needs a file, not a DICOM folder")
    _check_file_path(path)
    info = read_nifti_header(path) if is_nifti(path) else read_itk_header(path)
    return VolumeHeader(
        path, info["shape"], info["spacing"], info["origin"], info["direction"], info["dtype"]
    )


def _storage_array(volume: Volume) -> np.ndarray:
    """Labels as uint8; images as int16 when that is lossless, else float32."""
    if volume.is_label:
        return volume.array.astype(np.uint8, copy=False)
    arr = volume.array
    if arr.size and np.all(np.isfinite(arr)):
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= _INT16.min and hi <= _INT16.max and np.array_equal(arr, np.round(arr)):
            return arr.astype(np.int16)
    return arr.astype(np.float32, copy=False)


def write_volume(
    volume: Volume,
    path: str | os.PathLike,
    overwrite: bool = False,
    reference: Volume | str | os.PathLike | None = None,
) -> Path:
    """Write a Volume with exactly its shape, spacing, origin and direction.

    The format follows the extension: ``.nii``/``.nii.gz`` (qform and sform, code 1 scanner),
    ``.nrrd`` or ``.mha``. Labels are stored as uint8; images as int16 when all values are whole
    numbers within int16 (lossless), else float32. The file is written to a temporary name and
    renamed, so a failed write leaves nothing behind.

    Args:
        volume: what to write.
        path: output file.
        overwrite: replace an existing file.
        reference: optional Volume or NIfTI/NRRD/MHA file the output must match in geometry (e.g.
            the input CT of a segmentation). For a NIfTI output and NIfTI reference file, the
            reference's qform/sform and codes are copied verbatim.

    Returns:
        The written path.

    Raises:
        InputError: unsupported extension, or geometry differs from ``reference``.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(WRITABLE_SUFFIXES):
        raise InputError(
            f"{path}: unsupported output type; livseg writes {', '.join(WRITABLE_SUFFIXES)}"
        )
    check_writable(path, overwrite)
    ref_header = None
    if reference is not None:
        if isinstance(reference, Volume):
            ref_geom = reference
        else:
            ref_path = Path(reference)
            ref_geom = (
                read_volume(ref_path) if ref_path.is_dir() else read_header(ref_path).geometry()
            )
            if is_nifti(ref_path) and is_nifti(path):
                import nibabel as nib

                ref_header = nib.load(str(ref_path)).header
        mismatch = volume.geometry_mismatch(ref_geom)
        if mismatch:
            raise InputError(
                f"{path}: the volume's geometry differs from the reference "
                f"{reference if not isinstance(reference, Volume) else ''}: "
                f"{mismatch}"
            )
    data = _storage_array(volume)
    with atomic_path(path, overwrite) as tmp:
        if is_nifti(path):
            write_nifti(data, volume.spacing, volume.origin, volume.direction, tmp, ref_header)
        else:
            write_itk(data, volume.spacing, volume.origin, volume.direction, tmp)
    log.debug("wrote %s (%s, %s)", path, volume.kind, "x".join(map(str, volume.shape[::-1])))
    return path


def convert(
    source: str | os.PathLike,
    output: str | os.PathLike,
    series_uid: str | None = None,
    segs=None,
    kind: Kind | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a CT (DICOM series folder or file) or DICOM-SEG objects to a NIfTI/NRRD/MHA file.

    Without ``segs``, writes the volume read from ``source`` (``kind`` as in
    :func:`read_volume`). With ``segs``, ``source`` is the CT the SEGs were drawn on and the
    output is their LiTS label volume (0 background, 1 liver, 2 tumour) on its grid.

    Args:
        source: DICOM series folder, or NIfTI/NRRD/MHA file.
        output: output file (format by extension).
        series_uid: SeriesInstanceUID when the folder holds several series.
        segs: optional sequence of ``(seg_path, labels)`` as in
            :func:`livseg.io.dicomseg.lits_label_from_segs`.
        kind: image/label decision for non-SEG conversion (None: guess).
        overwrite: replace an existing output.

    Returns:
        The written path.

    Raises:
        InputError, OutputExistsError: see :func:`read_volume`, :func:`write_volume`.
    """
    check_writable(output, overwrite)
    volume = read_volume(source, kind=None if segs else kind, series_uid=series_uid)
    if segs:
        if volume.is_label:
            raise InputError(
                f"{source}: the reference for DICOM-SEG must be the CT image, got a label volume"
            )
        volume = lits_label_from_segs(volume, segs)
    return write_volume(volume, output, overwrite=overwrite)
