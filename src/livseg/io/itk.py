"""NRRD and MetaImage (MHA/MHD) reading and writing through SimpleITK.

SimpleITK's geometry is LPS with axes in (x, y, z) order; livseg's is the same reversed:
``spacing = sitk.GetSpacing()[::-1]``, ``origin = sitk.GetOrigin()[::-1]``,
``direction = sitk_direction[::-1, ::-1]``, and ``sitk.GetArrayFromImage`` already returns (z, y, x).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from livseg.errors import InputError

log = logging.getLogger("livseg.io.itk")

ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def is_itk(path: str | os.PathLike) -> bool:
    """True when the file name ends in .nrrd, .nhdr, .mha or .mhd (case-insensitive)."""
    return Path(path).name.lower().endswith(ITK_SUFFIXES)


def _reader(path: Path):
    import SimpleITK as sitk

    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an NRRD/MHA file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: not a readable NRRD/MetaImage file ({_short(exc)})") from exc
    dim = reader.GetDimension()
    size = reader.GetSize()
    if reader.GetNumberOfComponents() != 1:
        raise InputError(
            f"{path}: {reader.GetNumberOfComponents()} components per voxel; "
            "a scalar 3-D volume is needed"
        )
    if dim < 3:
        raise InputError(f"{path}: {dim}-D image of size {size}; a 3-D CT volume is needed")
    if dim > 3 and any(s != 1 for s in size[3:]):
        raise InputError(
            f"{path}: {dim}-D image of size {size} (several volumes); a single 3-D volume is needed"
        )
    return reader


def _short(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def itk_geometry(spacing, origin, direction, dim: int):
    """SimpleITK (x, y, z) spacing/origin/direction -> livseg's reversed (z, y, x) geometry."""
    d = np.asarray(direction, dtype=np.float64).reshape(dim, dim)[:3, :3]
    return (
        tuple(float(s) for s in spacing[:3][::-1]),
        tuple(float(o) for o in origin[:3][::-1]),
        d[::-1, ::-1].copy(),
    )


def read_itk_header(path: str | os.PathLike) -> dict:
    """Header-only geometry of an NRRD/MHA file (same keys as ``read_nifti_header``)."""
    import SimpleITK as sitk

    path = Path(path)
    reader = _reader(path)
    spacing, origin, direction = itk_geometry(
        reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), reader.GetDimension()
    )
    size = reader.GetSize()
    return {
        "shape": (int(size[2]), int(size[1]), int(size[0])),
        "spacing": spacing,
        "origin": origin,
        "direction": direction,
        "dtype": sitk.GetPixelIDValueAsString(reader.GetPixelID()),
    }


def read_itk(path: str | os.PathLike):
    """Read an NRRD/MHA file.

    Returns:
        ``(array, spacing, origin, direction, disk_dtype)`` like :func:`livseg.io.nifti.read_nifti`.

    Raises:
        InputError: missing, corrupt, 2-D, multi-component or multi-volume file.
    """
    import SimpleITK as sitk

    path = Path(path)
    reader = _reader(path)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read the voxel data ({_short(exc)})") from exc
    dim = img.GetDimension()
    spacing, origin, direction = itk_geometry(
        img.GetSpacing(), img.GetOrigin(), img.GetDirection(), dim
    )
    array = sitk.GetArrayFromImage(img)
    if array.ndim > 3:
        array = array[(0,) * (array.ndim - 3)]
    return np.ascontiguousarray(array), spacing, origin, direction, str(array.dtype)


def write_itk(array_zyx: np.ndarray, spacing, origin, direction, path: Path) -> None:
    """Write a (Z, Y, X) array with livseg geometry as NRRD/MHA (compressed), non-atomically.

    Raises:
        InputError: SimpleITK refuses the geometry (e.g. a degenerate direction matrix).
    """
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    try:
        img.SetSpacing([float(s) for s in spacing[::-1]])
        img.SetOrigin([float(o) for o in origin[::-1]])
        img.SetDirection([float(v) for v in np.asarray(direction)[::-1, ::-1].ravel()])
        sitk.WriteImage(img, str(path), useCompression=True)
    except RuntimeError as exc:
        raise InputError(f"{path}: SimpleITK cannot write this volume ({_short(exc)})") from exc
