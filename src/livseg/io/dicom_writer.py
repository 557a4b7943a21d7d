"""Write a CT image :class:`~livseg.volume.Volume` as a DICOM CT series (one file per slice).

Each slice becomes a CT Image Storage object with the geometry of the volume:

* ``ImageOrientationPatient`` = the LPS unit vectors of the array's x axis (along a row) and
  y axis (down a column);
* ``ImagePositionPatient`` of slice ``k`` = the LPS position of voxel ``(k, 0, 0)``;
* ``PixelSpacing`` = ``[sy, sx]`` (row spacing, column spacing), ``SliceThickness`` and
  ``SpacingBetweenSlices`` = ``sz`` (mm);
* stored values are signed int16 with ``RescaleSlope`` 1 and ``RescaleIntercept`` -1024, i.e.
  ``HU = stored - 1024`` (HU are rounded to integers).

Study, series, frame-of-reference and instance UIDs are random, or derived deterministically
(``2.25.<hash>`` UIDs) from ``uid_seed`` so that re-running a generator reproduces the files.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livseg.errors import InputError, OutputExistsError
from livseg.io.atomic import DIR_MODE, umask_mode
from livseg.io.dicom import dicom_files
from livseg.volume import Volume

log = logging.getLogger("livseg.io.dicom_writer")

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RESCALE_INTERCEPT = -1024.0
RESCALE_SLOPE = 1.0
_INT16 = np.iinfo(np.int16)
_WINDOW = (40.0, 400.0)  # WindowCenter, WindowWidth (HU): soft tissue


def _uid(uid_seed: str | None, *parts: object) -> str:
    """A UUID-derived ``2.25.`` UID: random, or a hash of ``uid_seed`` and ``parts``."""
    if uid_seed is None:
        value = uuid.uuid4()
    else:
        text = "\x1f".join([uid_seed, *map(str, parts)])
        value = uuid.UUID(bytes=hashlib.sha256(text.encode("utf-8")).digest()[:16])
    return f"2.25.{value.int}"


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) for ``value``."""
    text = f"{value:.10g}"
    if len(text) > 16:
        text = f"{value:.8g}"
    return text


def _check_volume(volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row/column cosines and slice normal (LPS x, y, z order) of a volume, checked."""
    if volume.kind != "image":
        raise InputError("DICOM CT export needs an image volume (kind 'image'), got a label volume")
    d = volume.direction
    row = d[:, 2][::-1]  # array x axis in LPS (x, y, z)
    col = d[:, 1][::-1]
    slc = d[:, 0][::-1]
    normal = np.cross(row, col)
    if (
        abs(float(row @ col)) > 1e-4
        or abs(np.linalg.norm(row) - 1) > 1e-4
        or abs(np.linalg.norm(col) - 1) > 1e-4
    ):
        raise InputError("DICOM CT export: the volume's in-plane axes are not orthonormal")
    if abs(abs(float(normal @ slc)) - 1.0) > 1e-4:
        raise InputError(
            "DICOM CT export: the slice axis is not perpendicular to the slices "
            "(sheared or tilted volume); resample it first"
        )
    return row, col, slc


@dataclass(frozen=True)
class _SeriesTags:
    """The attributes every slice file of one written series shares."""

    study_uid: str
    series_uid: str
    frame_uid: str
    study_date: str
    series_number: int
    series_description: str
    study_description: str
    patient_id: str
    patient_name: str


def _check_target(folder: Path, overwrite: bool) -> None:
    """Refuse an existing ``folder`` unless ``overwrite`` and it holds nothing but DICOM files.

    DICOM files are those of :func:`livseg.io.dicom.dicom_files` (the DICOM preamble, any name);
    a sub-folder, a hidden file or any other file makes the folder not replaceable.
    """
    if not folder.exists():
        return
    if not overwrite:
        raise OutputExistsError(f"{folder}: output exists (use --overwrite to replace it)")
    if not folder.is_dir() or set(folder.iterdir()) != set(dicom_files(folder)):
        raise OutputExistsError(
            f"{folder}: exists and is not a DICOM series folder written "
            "before (holds other files); refusing to replace it"
        )


def _stored_values(volume: Volume, folder: Path) -> np.ndarray:
    """int16 stored values ``round(HU) - RESCALE_INTERCEPT`` (Z, Y, X), range-checked."""
    hu = np.rint(np.asarray(volume.array, dtype=np.float64))
    stored = (hu - RESCALE_INTERCEPT) / RESCALE_SLOPE
    if stored.size and (stored.min() < _INT16.min or stored.max() > _INT16.max):
        raise InputError(
            f"{folder}: HU range [{hu.min():.0f}, {hu.max():.0f}] does not fit int16 "
            f"stored values with intercept {RESCALE_INTERCEPT:.0f}"
        )
    return stored.astype(np.int16)


def _slice_dataset(
    tags: _SeriesTags,
    sop_uid: str,
    k: int,
    volume: Volume,
    cosines: tuple[np.ndarray, np.ndarray],
    pixels: np.ndarray,
):
    """The CT Image Storage dataset of slice ``k`` (``pixels``: (Y, X) int16 stored values)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    row, col = cosines
    pos = volume.index_to_lps((k, 0, 0))
    sz, sy, sx = volume.spacing
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = tags.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "livseg"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = tags.study_description[:64]
    ds.SeriesDescription = tags.series_description[:64]
    ds.PatientName = tags.patient_name
    ds.PatientID = tags.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.KVP = ""
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = tags.study_uid
    ds.SeriesInstanceUID = tags.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = int(tags.series_number)
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = k + 1
    ds.FrameOfReferenceUID = tags.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [_ds(float(v)) for v in pos]
    ds.ImageOrientationPatient = [_ds(float(v)) for v in (*row, *col)]
    ds.SliceLocation = _ds(float(np.dot(pos, np.cross(row, col))))
    ds.SliceThickness = _ds(sz)
    ds.SpacingBetweenSlices = _ds(sz)
    ds.PixelSpacing = [_ds(sy), _ds(sx)]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = _ds(RESCALE_INTERCEPT)
    ds.RescaleSlope = _ds(RESCALE_SLOPE)
    ds.RescaleType = "HU"
    ds.WindowCenter = _ds(_WINDOW[0])
    ds.WindowWidth = _ds(_WINDOW[1])
    ds.PixelData = np.ascontiguousarray(pixels).astype("<i2").tobytes()
    return ds


def _move_into_place(tmp_dir: Path, folder: Path, overwrite: bool) -> None:
    """Rename the written ``tmp_dir`` onto ``folder`` (replacing it when ``overwrite``)."""
    if not folder.exists():
        os.replace(tmp_dir, folder)
        return
    if not overwrite:  # appeared meanwhile
        raise OutputExistsError(f"{folder}: output exists (use --overwrite to replace it)")
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
    os.replace(folder, trash / folder.name)
    os.replace(tmp_dir, folder)
    shutil.rmtree(trash)


def write_dicom_series(
    volume: Volume,
    folder: str | os.PathLike,
    *,
    series_description: str = "livseg CT",
    uid_seed: str | None = None,
    patient_id: str = "LIVSEG",
    patient_name: str = "Anonymous",
    study_description: str = "",
    study_date: str | None = None,
    series_number: int = 1,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``volume`` as a DICOM CT series, one file per axial slice, ``slice-NNNN.dcm``.

    The whole series is written to a temporary folder beside ``folder`` and then renamed onto it,
    so a failed write leaves nothing behind.

    Args:
        volume: image Volume (Z, Y, X) in HU; any orthonormal direction whose slice axis is
            perpendicular to the slices. Values are rounded to integers.
        folder: output folder for the series.
        series_description: SeriesDescription (at most 64 characters).
        uid_seed: when given, every UID is derived from it (same seed, same UIDs).
        patient_id: PatientID.
        patient_name: PatientName (DICOM person name, e.g. ``Family^Given``).
        study_description: StudyDescription.
        study_date: StudyDate/SeriesDate ``YYYYMMDD``; default today.
        series_number: SeriesNumber.
        overwrite: replace an existing ``folder``. Only a folder that holds nothing but DICOM
            files (a previous series; DICOM as in :func:`livseg.io.dicom.dicom_files`, no
            sub-folders or hidden files) is replaced; anything else is refused.

    Returns:
        The slice files, in slice order (InstanceNumber 1..Z, increasing along the array's z).

    Raises:
        InputError: label volume, sheared geometry, or HU outside the int16 range after the
            -1024 intercept.
        OutputExistsError: ``folder`` exists and ``overwrite`` is False, or it holds other files.
    """
    import pydicom

    folder = Path(folder)
    row, col, _ = _check_volume(volume)
    _check_target(folder, overwrite)
    stored = _stored_values(volume, folder)
    tags = _SeriesTags(
        study_uid=_uid(uid_seed, "study"),
        series_uid=_uid(uid_seed, "series", series_number),
        frame_uid=_uid(uid_seed, "frame-of-reference"),
        study_date=datetime.date.today().strftime("%Y%m%d") if study_date is None else study_date,
        series_number=series_number,
        series_description=series_description,
        study_description=study_description,
        patient_id=patient_id,
        patient_name=patient_name,
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp_dir.chmod(
        umask_mode(DIR_MODE)
    )  # mkdtemp makes it 0700; the series folder follows the umask
    files: list[Path] = []
    try:
        for k in range(volume.shape[0]):
            sop_uid = _uid(uid_seed, "instance", series_number, k)
            ds = _slice_dataset(tags, sop_uid, k, volume, (row, col), stored[k])
            path = tmp_dir / f"slice-{k + 1:04d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            files.append(folder / path.name)
        _move_into_place(tmp_dir, folder, overwrite)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    log.info("%s: wrote DICOM CT series (%d slices, %s)", folder, len(files), series_description)
    return files
