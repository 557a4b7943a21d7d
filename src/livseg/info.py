"""What is in a volume file or DICOM series: geometry, value range or label counts.

The library function behind ``livseg info``. All geometry is reported in the usual *world*
order (x, y, z), as ITK and nibabel users read it, not in the Volume's internal (z, y, x) order.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from livseg.volume import Kind, Volume

log = logging.getLogger("livseg.info")


def _geometry(volume: Volume) -> dict[str, Any]:
    direction_lps = volume.direction[::-1, ::-1]  # SimpleITK convention: rows x,y,z; cols i,j,k
    return {
        "shape": list(volume.shape[::-1]),
        "spacing_mm": [float(v) for v in volume.spacing[::-1]],
        "origin_lps_mm": [float(v) for v in volume.origin[::-1]],
        "orientation": volume.orientation_codes(),
        "direction_lps": [[float(v) for v in row] for row in direction_lps],
        "voxel_volume_ml": volume.voxel_volume_ml,
    }


def _values(volume: Volume) -> dict[str, Any]:
    arr = volume.array
    if volume.is_label:
        counts = np.bincount(arr.ravel(), minlength=1)
        present = np.flatnonzero(counts)
        return {
            "label_counts": {int(v): int(counts[v]) for v in present},
            "label_volumes_ml": {
                int(v): float(counts[v]) * volume.voxel_volume_ml for v in present if v != 0
            },
        }
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return {"hu_min": None, "hu_max": None, "hu_mean": None, "non_finite": int(arr.size)}
    out = {
        "hu_min": float(finite.min()),
        "hu_max": float(finite.max()),
        "hu_mean": float(finite.mean(dtype=np.float64)),
    }
    if finite.size != arr.size:
        out["non_finite"] = int(arr.size - finite.size)
    return out


def volume_info(
    path: str | os.PathLike, series_uid: str | None = None, kind: Kind | None = None
) -> dict[str, Any]:
    """Describe a NIfTI/NRRD/MHA file or a DICOM series folder.

    Args:
        path: file or DICOM folder.
        series_uid: SeriesInstanceUID when a DICOM folder holds several series.
        kind: "image", "label" or None to guess (see :mod:`livseg.io`).

    Returns:
        A JSON-serialisable dict: ``path``, ``format``, ``kind``, ``dtype`` (on disk),
        ``shape`` (x, y, z voxels), ``spacing_mm`` (x, y, z), ``origin_lps_mm`` (x, y, z),
        ``orientation`` (e.g. "LPS"), ``direction_lps`` (3x3, SimpleITK convention: column a is
        the LPS unit vector of voxel axis i, j, k), ``voxel_volume_ml``; for images ``hu_min``,
        ``hu_max``, ``hu_mean`` (HU); for labels ``label_counts`` and ``label_volumes_ml``
        (value -> voxels / ml); for DICOM ``series_uid``, ``series_description``, ``n_files``
        and ``dropped`` (file, reason) lists; for NIfTI ``qform_code`` and ``sform_code``.

    Raises:
        livseg.errors.InputError: as :func:`livseg.io.read_volume`.
    """
    from livseg import io as lio
    from livseg.io import dicom, itk, nifti

    path = Path(path)
    info: dict[str, Any] = {"path": str(path)}
    if path.is_dir():
        series = dicom.select_series(dicom.scan_dicom_folder(path), series_uid, path)
        stack = dicom.plan_stack(series, path)
        volume = dicom.load_stack(stack)
        info.update(
            {
                "format": "DICOM series",
                "series_uid": series.uid,
                "series_description": series.description,
                "modality": series.modality,
                "n_files": len(series.slices) + len(series.other),
                "dropped": [{"file": str(p), "reason": r} for p, r in stack.dropped],
                "kind": "image",
                "dtype": "DICOM stored values x RescaleSlope + RescaleIntercept",
            }
        )
    else:
        volume = lio.read_volume(path, kind=kind)
        if nifti.is_nifti(path):
            header = nifti.read_nifti_header(path)
            info.update(
                {
                    "format": "NIfTI",
                    "qform_code": header["qform_code"],
                    "sform_code": header["sform_code"],
                }
            )
        else:
            header = itk.read_itk_header(path)
            info["format"] = (
                "NRRD" if path.name.lower().endswith((".nrrd", ".nhdr")) else "MetaImage"
            )
        info.update({"kind": volume.kind, "dtype": header["dtype"]})
    info.update(_geometry(volume))
    info.update(_values(volume))
    return info


def _vec(v, fmt: str = "{:.6g}") -> str:
    return "(" + ", ".join(fmt.format(x) for x in v) + ")"


def _header_lines(info: dict[str, Any]) -> list[str]:
    """Path, format and (DICOM) series lines."""
    codes = (
        f" (qform code {info['qform_code']}, sform code {info['sform_code']})"
        if "qform_code" in info
        else ""
    )
    lines = [f"{info['path']}", f"  format       {info['format']}" + codes]
    if "series_uid" in info:
        lines.append(
            f"  series       {info['series_uid']} '{info['series_description']}' "
            f"[{info['modality']}], {info['n_files']} file(s)"
        )
        for d in info["dropped"]:
            lines.append(f"  dropped      {Path(d['file']).name}: {d['reason']}")
    return lines


def _value_lines(info: dict[str, Any]) -> list[str]:
    """Label counts/volumes for labels; HU range and non-finite count for images."""
    if "label_counts" in info:
        lines = []
        for value, count in info["label_counts"].items():
            ml = info["label_volumes_ml"].get(value)
            extra = f", {ml:.2f} ml" if ml is not None else ""
            lines.append(f"  label {value:<6} {count} voxels{extra}")
        return lines
    if info.get("hu_min") is None:
        lines = ["  HU range     no finite values"]
    else:
        lines = [
            f"  HU range     {info['hu_min']:g} .. {info['hu_max']:g} (mean {info['hu_mean']:.1f})"
        ]
    if info.get("non_finite"):
        lines.append(f"  non-finite   {info['non_finite']} voxels")
    return lines


def format_info(info: dict[str, Any]) -> str:
    """Human-readable multi-line text of a :func:`volume_info` dict."""
    lines = _header_lines(info)
    lines += [
        f"  kind         {info['kind']}",
        f"  dtype        {info['dtype']}",
        f"  shape        {' x '.join(str(s) for s in info['shape'])} (x, y, z)",
        f"  spacing      {_vec(info['spacing_mm'])} mm",
        f"  origin       {_vec(info['origin_lps_mm'], '{:.4f}')} mm (LPS)",
        f"  orientation  {info['orientation']}",
        "  direction    "
        + "\n               ".join(_vec(row, "{: .6f}") for row in info["direction_lps"]),
    ]
    lines += _value_lines(info)
    return "\n".join(lines)
