"""DICOM CT series (one file per slice) read into a :class:`~livseg.volume.Volume` with pydicom.

**Which files of a folder count** (:func:`dicom_files`, the one rule every livseg module uses):
the folder is searched recursively; files and folders whose name starts with ``.`` and files
named ``DICOMDIR`` are skipped; every other file is a DICOM file when it carries the DICOM file
preamble (bytes 128-131 are ``DICM``), whatever its name or extension (scanners often write
files without one). Files without the preamble are ignored (pydicom refuses them too).

A folder is scanned header-only (:func:`scan_dicom_folder`); image files are grouped by
SeriesInstanceUID. DICOM objects without an image plane (DICOM-SEG, structured reports, ...) are
listed but never stacked.

Rules for building the volume of one series (:func:`plan_stack`), in order:

1. **Series choice.** A folder with one image series reads that one; with several, ``series_uid``
   must name one, else :class:`~livseg.errors.InputError` lists every UID with its description
   and slice count.
2. **Orientation.** Slices are grouped by ImageOrientationPatient (cosines within 1e-3), Rows,
   Columns and PixelSpacing. The largest group is the stack; slices of other groups (localisers,
   reformats) are dropped with a warning naming each file.
3. **Slice order.** Each slice's position along the slice normal ``n = row x col`` is
   ``s = n . ImagePositionPatient``; slices are sorted by increasing ``s`` so the array's z axis
   points along ``+n``. Two slices at one position are an error (unless they are the same
   SOP instance, which is dropped as a duplicate).
4. **Regular grid.** The grid step is the dominant (most frequent, 0.01 mm bins) distance
   between consecutive positions, refined over the longest run of such distances. Slices more
   than 5 % of the step (at least 0.001 mm) off that grid, and grid slices detached from the
   longest contiguous run by missing slices, are dropped with a warning naming the file.
5. **Gantry tilt.** The in-plane part of every kept slice position must be constant (within 5 % of
   the pixel spacing); otherwise the slices are sheared (gantry tilt) and reading fails, since
   livseg does not resample.
6. At most 10 % of the series' image files (at least one) may be dropped in steps 2 to 4; more
   means the series is not one regular stack and reading fails with the reason.

Voxel values are ``stored * RescaleSlope + RescaleIntercept`` (HU), per slice, as float32.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from livseg.errors import InputError
from livseg.volume import Volume

log = logging.getLogger("livseg.io.dicom")

_NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "DICOM-SEG",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT structure set",
    "1.2.840.10008.5.1.4.1.1.66": "raw data",
    "1.2.840.10008.5.1.4.1.1.11.1": "presentation state",
}
_ORIENTATION_TOL = 1e-3
_INPLANE_TOL_FRACTION = 0.05
_GRID_TOL_FRACTION = 0.05
_GRID_TOL_MIN_MM = 1e-3
_MAX_DROP_FRACTION = 0.10
_PREAMBLE_LENGTH = 128
_DICOM_MAGIC = b"DICM"


@dataclass(frozen=True)
class SliceHeader:
    """Header facts of one single-frame DICOM image file.

    Attributes:
        path: file.
        sop_uid: SOPInstanceUID.
        position: ImagePositionPatient (x, y, z) LPS mm, (3,).
        row_cosine: first three IOP values (direction of increasing column index), (3,).
        col_cosine: last three IOP values (direction of increasing row index), (3,).
        pixel_spacing: (row spacing, column spacing) mm, i.e. (sy, sx).
        rows: number of rows (y size).
        columns: number of columns (x size).
        instance_number: InstanceNumber or None.
        thickness: SliceThickness mm or None.
        spacing_between: SpacingBetweenSlices mm or None.
    """

    path: Path
    sop_uid: str
    position: np.ndarray
    row_cosine: np.ndarray
    col_cosine: np.ndarray
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    instance_number: int | None = None
    thickness: float | None = None
    spacing_between: float | None = None

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.row_cosine, self.col_cosine)
        return n / np.linalg.norm(n)


@dataclass
class DicomSeries:
    """One SeriesInstanceUID found in a folder.

    Attributes:
        uid: SeriesInstanceUID.
        description: SeriesDescription ('' when absent).
        modality: Modality ('' when absent).
        slices: image slices (single-frame files with an image plane).
        other: (file, reason) of this series' files that are not stackable images.
    """

    uid: str
    description: str = ""
    modality: str = ""
    slices: list[SliceHeader] = field(default_factory=list)
    other: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line: UID, description, modality and counts."""
        desc = f" '{self.description}'" if self.description else ""
        extra = f", {len(self.other)} non-image object(s)" if self.other else ""
        return (
            f"{self.uid}{desc} [{self.modality or '?'}]: {len(self.slices)} image slice(s){extra}"
        )


@dataclass
class SliceStack:
    """The slices kept for a volume, in array order, with the volume geometry.

    Attributes:
        series: the series they come from.
        slices: kept slices sorted by increasing position along the normal (array z order).
        dropped: (file, reason) of every image file left out, each also logged as a warning.
        spacing: (sz, sy, sx) mm.
        origin: (oz, oy, ox) LPS mm (position of the first kept slice's first pixel, reversed).
        direction: 3x3 reversed-LPS direction (columns: z = normal, y = col cosine, x = row cosine).
    """

    series: DicomSeries
    slices: list[SliceHeader]
    dropped: list[tuple[Path, str]]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray


# --- scanning ---------------------------------------------------------------------------------


def _floats(value, n: int) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _opt_float(ds, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _opt_int(ds, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _not_an_image(ds) -> str | None:
    """Why this DICOM object is not a single-frame image, or None when it is one."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in _NON_IMAGE_SOP_CLASSES:
        return _NON_IMAGE_SOP_CLASSES[sop_class]
    if "Rows" not in ds or "Columns" not in ds:
        return "no image (no Rows/Columns)"
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        return f"multi-frame image ({frames} frames; enhanced multi-frame CT is not supported)"
    return None


def _image_plane(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | str:
    """(position (3,), unit row cosine (3,), unit column cosine (3,), pixel spacing (2,)), or the
    reason (str) why the image plane is missing or invalid."""
    pos = _floats(ds.get("ImagePositionPatient"), 3)
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    ps = _floats(ds.get("PixelSpacing"), 2)
    if pos is None or iop is None:
        return "image without ImagePositionPatient/ImageOrientationPatient"
    if ps is None or np.any(ps <= 0):
        return "image without a valid PixelSpacing"
    row, col = iop[:3], iop[3:]
    if (
        abs(np.linalg.norm(row) - 1) > 1e-2
        or abs(np.linalg.norm(col) - 1) > 1e-2
        or abs(float(row @ col)) > 1e-2
    ):
        return f"invalid ImageOrientationPatient {list(iop)}"
    return pos, row / np.linalg.norm(row), col / np.linalg.norm(col), ps


def _slice_header(ds, path: Path) -> SliceHeader | str:
    """A SliceHeader, or the reason (str) why this DICOM object is not a stackable image."""
    reason = _not_an_image(ds)
    if reason is not None:
        return reason
    plane = _image_plane(ds)
    if isinstance(plane, str):
        return plane
    pos, row, col, ps = plane
    return SliceHeader(
        path=path,
        sop_uid=str(ds.get("SOPInstanceUID", path.name)),
        position=pos,
        row_cosine=row,
        col_cosine=col,
        pixel_spacing=(float(ps[0]), float(ps[1])),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        instance_number=_opt_int(ds, "InstanceNumber"),
        thickness=_opt_float(ds, "SliceThickness"),
        spacing_between=_opt_float(ds, "SpacingBetweenSlices"),
    )


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a readable file with the DICOM file preamble (``DICM`` at byte 128).

    The file name and extension play no part (see the module docstring).
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(_PREAMBLE_LENGTH)
            return fh.read(len(_DICOM_MAGIC)) == _DICOM_MAGIC
    except OSError:
        return False


def _visible_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (recursive), sorted, without hidden entries and DICOMDIR."""
    return sorted(
        Path(root) / name
        for root, _dirs, names in os.walk(folder)
        for name in names
        if not name.startswith(".")
        and name.upper() != "DICOMDIR"
        and not any(part.startswith(".") for part in Path(root).relative_to(folder).parts)
    )


def dicom_files(folder: str | os.PathLike) -> list[Path]:
    """The DICOM files of a folder, by the one rule of the module docstring, sorted by path.

    Args:
        folder: a directory (searched recursively). A missing folder gives an empty list.

    Returns:
        The files that carry the DICOM preamble, hidden entries and DICOMDIR left out.
    """
    return [p for p in _visible_files(Path(folder)) if is_dicom_file(p)]


def _series_entry(series: dict[str, DicomSeries], ds) -> DicomSeries:
    uid = str(ds.get("SeriesInstanceUID", "")) or "<no SeriesInstanceUID>"
    return series.setdefault(
        uid,
        DicomSeries(
            uid=uid,
            description=str(ds.get("SeriesDescription", "") or ""),
            modality=str(ds.get("Modality", "") or ""),
        ),
    )


def scan_dicom_folder(folder: str | os.PathLike) -> list[DicomSeries]:
    """Read the headers of every DICOM file under ``folder`` and group them by series.

    Args:
        folder: a directory; its files are chosen by :func:`dicom_files` (recursive, hidden
            entries and DICOMDIR skipped, DICOM preamble required, any file name).

    Returns:
        Series in order of first appearance (files sorted by path). Series holding only
        non-image objects are included (with no ``slices``).

    Raises:
        InputError: the folder is missing, empty or holds no (readable) DICOM file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (a DICOM series is read from its folder)")
    series: dict[str, DicomSeries] = {}
    for path in dicom_files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError) as exc:
            log.debug("%s: skipped, not a readable DICOM file (%s)", path, exc)
            continue
        entry = _series_entry(series, ds)
        header = _slice_header(ds, path)
        if isinstance(header, str):
            entry.other.append((path, header))
        else:
            entry.slices.append(header)
    if not series:
        n_files = len(_visible_files(folder))
        if not n_files:
            raise InputError(
                f"{folder}: the folder is empty (expected the files of a DICOM series)"
            )
        raise InputError(f"{folder}: no DICOM file among its {n_files} file(s)")
    return list(series.values())


def select_series(
    series: list[DicomSeries], series_uid: str | None, folder: str | os.PathLike
) -> DicomSeries:
    """Pick the image series to read.

    Args:
        series: result of :func:`scan_dicom_folder`.
        series_uid: SeriesInstanceUID to read, or None when the folder must hold one image series.
        folder: named in error messages.

    Raises:
        InputError: no image series; several and none chosen (message lists them); UID not found.
    """
    if series_uid is not None:
        return _series_by_uid(series, series_uid, folder)
    images = [s for s in series if s.slices]
    if not images:
        reasons = sorted({r for s in series for _, r in s.other})
        raise InputError(
            f"{folder}: no DICOM image series, only non-image objects ({', '.join(reasons)})"
        )
    if len(images) > 1:
        raise InputError(
            f"{folder}: holds {len(images)} image series; choose one with series_uid "
            f"(CLI: --series UID):\n  " + "\n  ".join(s.summary() for s in images)
        )
    return images[0]


def _series_by_uid(
    series: list[DicomSeries], series_uid: str, folder: str | os.PathLike
) -> DicomSeries:
    for s in series:
        if s.uid == series_uid:
            if not s.slices:
                raise InputError(
                    f"{folder}: series {series_uid} holds no image slices "
                    f"({', '.join(sorted({r for _, r in s.other}))})"
                )
            return s
    listing = "\n  ".join(s.summary() for s in series)
    raise InputError(f"{folder}: no series with UID {series_uid}; found:\n  {listing}")


# --- stacking ---------------------------------------------------------------------------------


def _orientation_groups(slices: list[SliceHeader]) -> list[list[SliceHeader]]:
    groups: list[list[SliceHeader]] = []
    for sl in slices:
        for g in groups:
            ref = g[0]
            if (
                sl.rows == ref.rows
                and sl.columns == ref.columns
                and np.allclose(sl.pixel_spacing, ref.pixel_spacing, rtol=1e-4, atol=1e-5)
                and np.allclose(sl.row_cosine, ref.row_cosine, atol=_ORIENTATION_TOL)
                and np.allclose(sl.col_cosine, ref.col_cosine, atol=_ORIENTATION_TOL)
            ):
                g.append(sl)
                break
        else:
            groups.append([sl])
    return groups


def _describe(sl: SliceHeader) -> str:
    return (
        f"IOP {np.round(np.r_[sl.row_cosine, sl.col_cosine], 4).tolist()}, "
        f"{sl.rows}x{sl.columns} pixels of {sl.pixel_spacing[0]:g}x{sl.pixel_spacing[1]:g} mm"
    )


def _grid_step(s: np.ndarray) -> tuple[float, int]:
    """The dominant step (mm) between sorted positions ``s`` and the index its run starts at.

    The step is the most frequent distance (0.01 mm bins, smallest on ties), refined over the
    longest run of consecutive near-step distances (averages the rounding of stored positions).
    """
    diffs = np.diff(s)
    binned = Counter(np.round(diffs, 2).tolist())
    top = max(binned.values())
    step0 = min(v for v, c in binned.items() if c == top)
    regular = np.abs(diffs - step0) <= 0.1 * step0
    best_len, best_start, run = 0, 0, 0
    for i, ok in enumerate(regular):
        run = run + 1 if ok else 0
        if run > best_len:
            best_len, best_start = run, i - run + 1
    step = float((s[best_start + best_len] - s[best_start]) / best_len) if best_len else step0
    return step, best_start


def _longest_run(on_grid: np.ndarray, k: np.ndarray) -> list[int]:
    """Indexes of the longest run of on-grid slices at consecutive grid numbers ``k``."""
    runs: list[list[int]] = []
    for i in np.flatnonzero(on_grid):
        if runs and k[i] == k[runs[-1][-1]] + 1:
            runs[-1].append(int(i))
        else:
            runs.append([int(i)])
    return max(runs, key=len)


def _off_grid_reason(
    stack: list[SliceHeader],
    s: np.ndarray,
    k: np.ndarray,
    i: int,
    near: int,
    on_grid: bool,
    step: float,
) -> str:
    """Why slice ``i`` (nearest kept slice ``near``) is left out of the regular grid."""
    if not on_grid:
        return (
            f"off the {step:g} mm slice grid ({s[i] - s[near]:+.3f} mm from "
            f"{stack[near].path.name})"
        )
    return (
        f"detached from the stack by a gap of {abs(s[i] - s[near]):.3f} mm "
        f"({abs(k[i] - k[near]) - 1} missing slice(s) of {step:g} mm)"
    )


def _regular_grid(
    stack: list[SliceHeader], s: np.ndarray, dropped: list[tuple[Path, str]]
) -> tuple[list[SliceHeader], np.ndarray, float]:
    """Keep the longest contiguous run of slices on the dominant regular grid (rule 4).

    Appends every other slice to ``dropped`` with its reason. Returns (slices, positions, step).
    """
    step, anchor = _grid_step(s)
    tol = max(_GRID_TOL_MIN_MM, _GRID_TOL_FRACTION * step)
    k_float = (s - s[anchor]) / step
    k = np.round(k_float).astype(int)
    on_grid = np.abs(k_float - k) * step <= tol
    main = _longest_run(on_grid, k)
    lo, hi = main[0], main[-1]
    in_main = set(main)
    for i in range(len(stack)):
        if i in in_main:
            continue
        near = lo if i < lo else hi if i > hi else min(main, key=lambda j: abs(s[j] - s[i]))
        reason = _off_grid_reason(stack, s, k, i, near, bool(on_grid[i]), step)
        dropped.append((stack[i].path, reason))
    return [stack[i] for i in main], s[main], step


def _orientation_stack(
    series: DicomSeries, where: str, dropped: list[tuple[Path, str]]
) -> tuple[list[SliceHeader], np.ndarray, np.ndarray]:
    """The largest orientation/size group of slices (rule 2); the others go to ``dropped``.

    Returns:
        (slices, their positions along the normal (mm), the unit normal (3,)); unsorted.

    Raises:
        InputError: two largest groups of equal size (no one stack).
    """
    groups = sorted(_orientation_groups(series.slices), key=len, reverse=True)
    stack = groups[0]
    if len(groups) > 1 and len(groups[1]) == len(stack):
        raise InputError(
            f"{where}: inconsistent ImageOrientationPatient/size: {len(groups)} groups of slices "
            f"({'; '.join(f'{len(g)} with {_describe(g[0])}' for g in groups[:4])}); "
            "not one stack (gantry tilt varying per slice, or mixed reformats)"
        )
    normal = stack[0].normal
    s = np.array([float(normal @ sl.position) for sl in stack])
    for sl in (sl for g in groups[1:] for sl in g):
        along = float(normal @ sl.position)
        where_along = (
            f"{along - s.max():.2f} mm beyond the stack"
            if along > s.max()
            else f"{s.min() - along:.2f} mm before the stack"
            if along < s.min()
            else "within the stack"
        )
        dropped.append(
            (
                sl.path,
                f"orientation/size differs from the stack ({_describe(sl)} "
                f"vs {_describe(stack[0])}), {where_along}",
            )
        )
    return stack, s, normal


def _sorted_unique(
    stack: list[SliceHeader], s: np.ndarray, where: str, dropped: list[tuple[Path, str]]
) -> tuple[list[SliceHeader], np.ndarray]:
    """Slices sorted by position along the normal (rule 3); repeated SOP instances dropped.

    Raises:
        InputError: two different slices at one position.
    """
    order = np.argsort(s, kind="stable")
    stack = [stack[i] for i in order]
    s = s[order]
    keep: list[int] = []
    for i in range(len(stack)):
        if keep and abs(s[i] - s[keep[-1]]) < _GRID_TOL_MIN_MM * 10:
            prev = stack[keep[-1]]
            if stack[i].sop_uid == prev.sop_uid:
                dropped.append(
                    (stack[i].path, f"duplicate of {prev.path.name} (same SOP instance)")
                )
                continue
            raise InputError(
                f"{where}: two different slices at the same position {s[i]:.3f} mm along the "
                f"normal: {prev.path.name} and {stack[i].path.name} (several acquisitions in "
                "one series?)"
            )
        keep.append(i)
    return [stack[i] for i in keep], s[keep]


def _single_slice_step(sl: SliceHeader, where: str) -> float:
    """Slice spacing (mm) of a one-slice stack: SpacingBetweenSlices, SliceThickness or 1."""
    step = sl.spacing_between or sl.thickness or 1.0
    log.warning(
        "%s: a single slice; slice spacing set to %g mm (%s)",
        where,
        step,
        "SpacingBetweenSlices"
        if sl.spacing_between
        else "SliceThickness"
        if sl.thickness
        else "no thickness given",
    )
    return step


def _check_tilt(
    stack: list[SliceHeader], s: np.ndarray, normal: np.ndarray, pixel_mm: float, where: str
) -> None:
    """Rule 5: the in-plane part of the slice positions must be constant (no gantry tilt).

    Args:
        pixel_mm: the smaller pixel spacing (mm); the tolerance is a fraction of it.
    """
    pos = np.array([sl.position for sl in stack])
    inplane = pos - np.outer(pos @ normal, normal)
    dev = np.linalg.norm(inplane - inplane[0], axis=1)
    if dev.max() > _INPLANE_TOL_FRACTION * pixel_mm:
        worst = int(np.argmax(dev))
        span = float(abs(s[worst] - s[0])) or 1.0
        angle = float(np.degrees(np.arctan2(dev[worst], span)))
        raise InputError(
            f"{where}: slice positions do not follow the slice normal ({dev[worst]:.3f} mm "
            f"sideways shift at {stack[worst].path.name}, about {angle:.2f} degrees): gantry tilt "
            "or sheared stack; livseg does not resample such series (resample it first)"
        )


def plan_stack(series: DicomSeries, folder: str | os.PathLike = "") -> SliceStack:
    """Choose, order and check the slices of one series (rules 2-6 of the module docstring).

    Args:
        series: an image series from :func:`scan_dicom_folder`.
        folder: named in error messages.

    Returns:
        The :class:`SliceStack` (headers only; no pixel data read).

    Raises:
        InputError: inconsistent orientations, duplicate positions, missing slices, gantry tilt,
            or too many slices off the grid.
    """
    where = f"{folder or series.slices[0].path.parent}: series {series.uid}"
    n_all = len(series.slices)
    max_drop = max(1, int(_MAX_DROP_FRACTION * n_all))
    dropped: list[tuple[Path, str]] = []

    stack, s, normal = _orientation_stack(series, where, dropped)
    stack, s = _sorted_unique(stack, s, where, dropped)
    row_sp, col_sp = stack[0].pixel_spacing
    if len(stack) == 1:
        step = _single_slice_step(stack[0], where)
    else:
        stack, s, step = _regular_grid(stack, s, dropped)
    if len(dropped) > max_drop:
        reasons = "; ".join(f"{p.name}: {r}" for p, r in dropped[:5])
        raise InputError(
            f"{where}: irregular slice spacing or mixed stacks: {len(dropped)} of {n_all} image "
            f"files are not on one regular stack of slices (at most {max_drop} may be dropped); "
            f"refusing to build a volume with wrong spacing: {reasons}"
        )
    _check_tilt(stack, s, normal, min(row_sp, col_sp), where)
    for path, reason in dropped:
        log.warning("%s: dropped %s: %s", where, path, reason)

    row, col = stack[0].row_cosine, stack[0].col_cosine
    direction_xyz = np.column_stack([row, col, normal])  # columns: array x, y, z (LPS xyz)
    direction = direction_xyz[::-1, ::-1].copy()  # reversed: columns z, y, x in (z, y, x)
    return SliceStack(
        series=series,
        slices=stack,
        dropped=dropped,
        spacing=(float(step), float(row_sp), float(col_sp)),
        origin=tuple(float(v) for v in stack[0].position[::-1]),  # type: ignore[arg-type]
        direction=direction,
    )


def load_stack(stack: SliceStack) -> Volume:
    """Read the pixel data of a planned stack into a float32 HU image Volume (Z, Y, X).

    Raises:
        InputError: a file's pixel data cannot be decoded (names the file and transfer syntax).
    """
    import pydicom

    sl0 = stack.slices[0]
    out = np.empty((len(stack.slices), sl0.rows, sl0.columns), dtype=np.float32)
    for z, sl in enumerate(stack.slices):
        try:
            ds = pydicom.dcmread(sl.path)
            pixels = ds.pixel_array
        except Exception as exc:  # decoders raise many types
            ts = ""
            try:
                ts = f" (transfer syntax {ds.file_meta.TransferSyntaxUID.name})"
            except Exception:  # noqa: BLE001 - best-effort detail only
                pass
            raise InputError(f"{sl.path}: cannot decode the pixel data{ts}: {exc}") from exc
        if pixels.shape != (sl.rows, sl.columns):
            raise InputError(
                f"{sl.path}: pixel data of shape {pixels.shape}, expected ({sl.rows}, {sl.columns})"
            )
        slope = _opt_float(ds, "RescaleSlope")
        intercept = _opt_float(ds, "RescaleIntercept")
        slope = 1.0 if slope is None else slope
        intercept = 0.0 if intercept is None else intercept
        out[z] = pixels.astype(np.float64) * slope + intercept
    return Volume.image(out, stack.spacing, stack.origin, stack.direction)


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read one DICOM CT series from a folder into a float32 HU image Volume.

    See the module docstring for the series-choice, ordering, grid and tilt rules.

    Args:
        folder: directory holding the series' files (searched recursively).
        series_uid: SeriesInstanceUID to read when the folder holds several image series.

    Returns:
        Image Volume (Z, Y, X); z increases along the slice normal (row x column cosines).

    Raises:
        InputError: empty folder, no DICOM, no image series, several series without
            ``series_uid``, unknown UID, inconsistent orientation, missing slices, gantry tilt,
            undecodable pixel data.
    """
    series = select_series(scan_dicom_folder(folder), series_uid, folder)
    stack = plan_stack(series, folder)
    volume = load_stack(stack)
    log.info(
        "%s: read series %s: %d slices (%d dropped), spacing %s mm",
        folder,
        series.uid,
        volume.shape[0],
        len(stack.dropped),
        tuple(round(v, 4) for v in volume.spacing),
    )
    return volume
