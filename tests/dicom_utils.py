"""Tiny synthetic DICOM CT series and DICOM-SEG objects, written into a test's tmp_path.

Geometry is given in DICOM terms: LPS (x, y, z) positions in mm, ImageOrientationPatient
row/column cosines, PixelSpacing (row spacing, column spacing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def write_ct_slice(
    path: Path,
    stored: np.ndarray,
    position,
    row=(1.0, 0.0, 0.0),
    col=(0.0, 1.0, 0.0),
    pixel_spacing=(0.8, 0.7),
    series_uid: str = "1.2.3.4",
    description: str = "synthetic CT",
    instance: int = 1,
    slope: float = 1.0,
    intercept: float = -1024.0,
    sop_uid: str | None = None,
    thickness: float = 2.5,
) -> Path:
    """Write one single-frame CT slice; ``stored`` is the (rows, columns) int16 stored values."""
    stored = np.asarray(stored, dtype=np.int16)
    sop_uid = sop_uid or generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(CT_IMAGE_STORAGE, sop_uid)
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "CT"
    ds.PatientID = "synthetic"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.FrameOfReferenceUID = "1.2.3.9"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
    ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    ds.SliceThickness = f"{thickness:g}"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_ct_series(
    folder: Path,
    n_slices: int = 5,
    rows: int = 16,
    columns: int = 12,
    slice_spacing: float = 2.5,
    pixel_spacing=(0.8, 0.7),
    origin=(10.0, -20.0, 30.0),
    row=(1.0, 0.0, 0.0),
    col=(0.0, 1.0, 0.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    series_uid: str = "1.2.3.4",
    description: str = "synthetic CT",
    seed: int = 0,
    shuffle: bool = True,
    positions=None,
) -> dict:
    """Write a regular CT series, file names in shuffled spatial order.

    Slice k lies at ``origin + k * slice_spacing * (row x col)`` unless ``positions`` (a list
    of LPS positions) is given.

    Returns:
        dict with ``hu`` (Z, Y, X float64 expected HU in spatial order), ``positions``
        (Z, 3) LPS mm, ``files`` (in spatial order), ``normal`` (3,), ``row``, ``col``.
    """
    rng = np.random.default_rng(seed)
    row = np.asarray(row, dtype=np.float64)
    col = np.asarray(col, dtype=np.float64)
    normal = np.cross(row, col)
    if positions is None:
        positions = [np.asarray(origin) + k * slice_spacing * normal for k in range(n_slices)]
    positions = np.asarray(positions, dtype=np.float64)
    stored = rng.integers(0, 2000, size=(len(positions), rows, columns)).astype(np.int16)
    order = rng.permutation(len(positions)) if shuffle else np.arange(len(positions))
    files = [None] * len(positions)
    for file_no, k in enumerate(order):
        files[k] = write_ct_slice(
            folder / f"IM{file_no:04d}.dcm",
            stored[k],
            positions[k],
            row,
            col,
            pixel_spacing,
            series_uid,
            description,
            instance=file_no + 1,
            slope=slope,
            intercept=intercept,
            thickness=slice_spacing,
        )
    return {
        "hu": stored.astype(np.float64) * slope + intercept,
        "positions": positions,
        "files": files,
        "normal": normal,
        "row": row,
        "col": col,
    }


def write_seg(
    path: Path,
    frames: list[tuple[tuple[float, float, float], int, np.ndarray]],
    segments: list[tuple[int, str, str]],
    row=(1.0, 0.0, 0.0),
    col=(0.0, 1.0, 0.0),
    pixel_spacing=(0.8, 0.7),
    fractional: bool = False,
) -> Path:
    """Write a minimal DICOM-SEG.

    Args:
        path: output file.
        frames: (LPS position, segment number, (rows, columns) bool mask) per frame.
        segments: (number, SegmentLabel, property-type code meaning) per segment.
        row, col: ImageOrientationPatient cosines shared by all frames.
        pixel_spacing: (row spacing, column spacing) mm.
        fractional: write a FRACTIONAL (8-bit, max 255) instead of a BINARY segmentation.
    """
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(SEG_STORAGE, sop_uid)
    ds.SOPClassUID = SEG_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "SEG"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesDescription = "synthetic SEG"
    ds.StudyInstanceUID = "1.2.3"
    ds.FrameOfReferenceUID = "1.2.3.9"
    seg_seq = []
    for number, label, meaning in segments:
        item = Dataset()
        item.SegmentNumber = number
        item.SegmentLabel = label
        item.SegmentAlgorithmType = "MANUAL"
        code = Dataset()
        code.CodeValue = "0"
        code.CodingSchemeDesignator = "SCT"
        code.CodeMeaning = meaning
        item.SegmentedPropertyTypeCodeSequence = Sequence([code])
        seg_seq.append(item)
    ds.SegmentSequence = Sequence(seg_seq)
    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
    shared.PlaneOrientationSequence = Sequence([orient])
    meas = Dataset()
    meas.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    meas.SliceThickness = "2.5"
    shared.PixelMeasuresSequence = Sequence([meas])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for position, number, _ in frames:
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [f"{v:.6f}" for v in position]
        item.PlanePositionSequence = Sequence([pos])
        ident = Dataset()
        ident.ReferencedSegmentNumber = number
        item.SegmentIdentificationSequence = Sequence([ident])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    masks = np.stack([np.asarray(m, dtype=bool) for _, _, m in frames])
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = masks.shape[1:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    if fractional:
        ds.SegmentationType = "FRACTIONAL"
        ds.SegmentationFractionalType = "PROBABILITY"
        ds.MaximumFractionalValue = 255
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = (masks.astype(np.uint8) * 200).tobytes()
    else:
        ds.SegmentationType = "BINARY"
        ds.BitsAllocated = ds.BitsStored = 1
        ds.HighBit = 0
        ds.PixelData = pack_bits(masks.astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
