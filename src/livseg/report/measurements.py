"""Measurements of a liver/tumour label volume: volumes (ml), tumour burden, lesion list.

Definitions (all from the label volume and its header geometry):

* liver = label >= 1 (tumour voxels are liver voxels, LiTS convention); tumour = label == 2;
* volumes in ml = voxel count x voxel volume (1 ml = 1000 mm^3);
* tumour burden = tumour voxels / liver voxels (``None`` when no liver);
* lesions = 3-D connected components of the tumour mask, 6-connectivity (as the LiTS scorer;
  :func:`livseg.metrics.lesions.label_lesions`, the one labelling of lesions) of at least
  :data:`MIN_LESION_VOLUME_ML` (0.01 ml = 10 mm^3, about a 2.7 mm sphere). Smaller components
  (specks of one or a few voxels) are not reported as lesions: they stay in the label file and
  in the tumour volume, and are counted in ``small_tumour_components`` /
  ``small_tumour_components_ml``;
* longest axial diameter (mm) of a lesion = the maximum Feret diameter of its largest axial
  cross-section (the axial slice with most lesion voxels; ties: the first in array order),
  measured on the region covered by its pixels, each pixel an ``sx x sy`` mm
  rectangle (so an ``a x b`` pixel rectangle measures ``hypot(a*sx, b*sy)``);
* centroid = mean voxel index mapped to patient LPS coordinates (x, y, z) in mm;
* axial = the array axis closest to the patient's S-I direction (from the header direction);
* ``incomplete_coverage`` = the liver touches the first or last axial slice of the scan, so part
  of it may lie outside the field of view and the liver volume is a lower bound;
* ``liver_found`` = at least one liver voxel. With no liver, volumes are 0, burden is ``None``
  and the lesion list is empty.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from livseg.io.atomic import write_text_atomic
from livseg.metrics.lesions import label_lesions
from livseg.preprocess.bbox import bounding_box
from livseg.volume import Volume

log = logging.getLogger("livseg.report.measurements")

MEASUREMENTS_VERSION = "livseg-measurements-2"

MIN_LESION_VOLUME_ML = 0.01
"""Smallest tumour component reported as a lesion (ml; 0.01 ml = 10 mm^3). Smaller components
are counted in :attr:`Measurements.small_tumour_components` but not listed."""
LESION_CSV_FIELDS = (
    "lesion",
    "volume_ml",
    "longest_axial_diameter_mm",
    "voxels",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "axial_slice",
)


@dataclass(frozen=True)
class Lesion:
    """One tumour lesion (a 6-connected component of label 2).

    Attributes:
        lesion: 1-based id, lesions sorted by decreasing volume.
        voxels: voxel count.
        volume_ml: volume in ml.
        longest_axial_diameter_mm: max Feret diameter of the largest axial cross-section (mm).
        centroid_lps_mm: (x, y, z) LPS position of the centroid in mm.
        axial_slice: array index (along the axial axis) of the measured cross-section.
    """

    lesion: int
    voxels: int
    volume_ml: float
    longest_axial_diameter_mm: float
    centroid_lps_mm: tuple[float, float, float]
    axial_slice: int


@dataclass(frozen=True)
class Measurements:
    """Liver and tumour measurements of one label volume (see module docstring).

    ``tumour_volume_ml`` counts every tumour voxel; ``lesions`` / ``lesion_count`` only the
    components of at least ``lesion_min_volume_ml``; ``small_tumour_components`` (and their
    volume ``small_tumour_components_ml``) the smaller ones, which stay in the label file.
    """

    liver_found: bool
    liver_volume_ml: float
    tumour_volume_ml: float
    tumour_burden: float | None
    lesion_count: int
    incomplete_coverage: bool
    voxel_volume_ml: float
    spacing_mm: tuple[float, float, float]
    lesions: list[Lesion] = field(default_factory=list)
    lesion_min_volume_ml: float = MIN_LESION_VOLUME_ML
    small_tumour_components: int = 0
    small_tumour_components_ml: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict (version recorded under ``definitions``)."""
        d = asdict(self)
        d["definitions"] = MEASUREMENTS_VERSION
        return d


def axial_axis(volume: Volume) -> int:
    """The array axis (0, 1 or 2) whose direction is closest to the patient S-I axis."""
    # direction[:, a] is written in (z, y, x) patient order: row 0 is the S component.
    return int(np.argmax(np.abs(volume.direction[0, :])))


def max_feret_diameter(mask2d: np.ndarray, spacing_rc: tuple[float, float]) -> float:
    """Maximum Feret (caliper) diameter of the region covered by a 2-D mask's pixels.

    Each foreground pixel is the rectangle ``[r-0.5, r+0.5] x [c-0.5, c+0.5]``; the diameter
    is the largest distance between two corners of the covered region (computed on the
    convex hull of the pixel corners).

    Args:
        mask2d: (R, C) binary mask.
        spacing_rc: (row spacing, column spacing) in mm.

    Returns:
        Diameter in mm; 0.0 for an empty mask.
    """
    mask2d = np.asarray(mask2d, dtype=bool)
    if not mask2d.any():
        return 0.0
    rr, cc = np.nonzero(mask2d)
    # boundary pixels suffice: interior corners never lie on the hull
    er = ndimage.binary_erosion(mask2d, border_value=0)
    keep = ~er[rr, cc]
    rr, cc = rr[keep], cc[keep]
    offs = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    pts = (np.stack([rr, cc], axis=1)[:, None, :] + offs[None]).reshape(-1, 2)
    pts = np.unique(pts, axis=0) * np.asarray(spacing_rc, dtype=np.float64)
    if len(pts) > 8:
        try:
            from scipy.spatial import ConvexHull

            pts = pts[ConvexHull(pts).vertices]
        except Exception:  # degenerate (collinear) point sets: use them all
            pass
    diff = pts[:, None, :] - pts[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


def _incomplete_coverage(liver: np.ndarray, ax: int) -> bool:
    """True when a non-empty liver mask touches the first or last slice along axis ``ax``."""
    box = bounding_box(liver)
    if box is None:
        return False
    along = box[ax]
    return bool(along.start == 0 or along.stop == liver.shape[ax])


def _lesion(labels: Volume, sub: np.ndarray, start: np.ndarray, ax: int) -> Lesion:
    """Measure one lesion given as its own bounding-box mask ``sub`` at global index ``start``.

    The lesion id is left 0 (numbered after sorting).
    """
    inplane = [a for a in range(3) if a != ax]
    sp_rc = (labels.spacing[inplane[0]], labels.spacing[inplane[1]])
    count = int(sub.sum())
    idx = np.argwhere(sub).mean(axis=0) + start
    best = int(np.argmax(sub.sum(axis=tuple(inplane))))
    diam = max_feret_diameter(np.take(sub, best, axis=ax), sp_rc)
    lps = labels.index_to_lps(idx)
    return Lesion(
        0,
        count,
        count * labels.voxel_volume_ml,
        diam,
        tuple(float(v) for v in lps),
        best + int(start[ax]),
    )


def _lesions(labels: Volume, tumour: np.ndarray, ax: int) -> list[Lesion]:
    """The 6-connected tumour lesions, sorted by decreasing volume and numbered from 1."""
    # label inside the tumour bounding box only (memory bounded by the tumours, not the scan)
    box = bounding_box(tumour)
    comp, _ = label_lesions(tumour[box])
    offset = np.array([b.start for b in box])
    lesions = []
    for i, local in enumerate(ndimage.find_objects(comp), start=1):
        start = offset + np.array([s.start for s in local])  # global index of sub[0, 0, 0]
        lesions.append(_lesion(labels, comp[local] == i, start, ax))
    lesions.sort(key=lambda les: (-les.voxels, les.axial_slice))
    return [replace(les, lesion=k) for k, les in enumerate(lesions, start=1)]


def measure(labels: Volume, min_lesion_ml: float = MIN_LESION_VOLUME_ML) -> Measurements:
    """Measure a label volume (0 background, 1 liver, 2 tumour) in its own geometry.

    Args:
        labels: label Volume, any orientation; spacing in mm.
        min_lesion_ml: smallest component listed as a lesion (ml); smaller ones are only
            counted (``small_tumour_components``).

    Returns:
        :class:`Measurements`; lesions sorted by decreasing volume.
    """
    arr = labels.array
    vox_ml = labels.voxel_volume_ml
    liver = arr >= 1
    n_liver = int(np.count_nonzero(liver))
    tumour = arr == 2
    n_tumour = int(np.count_nonzero(tumour))
    ax = axial_axis(labels)
    found = _lesions(labels, tumour, ax) if n_tumour else []
    # float tolerance: a component of exactly the minimum volume is a lesion
    lesions = [les for les in found if les.volume_ml >= min_lesion_ml * (1 - 1e-9)]
    small = found[len(lesions) :]  # sorted by decreasing volume: the small ones come last
    lesions = [replace(les, lesion=k) for k, les in enumerate(lesions, start=1)]
    return Measurements(
        liver_found=n_liver > 0,
        liver_volume_ml=n_liver * vox_ml,
        tumour_volume_ml=n_tumour * vox_ml,
        tumour_burden=(n_tumour / n_liver) if n_liver else None,
        lesion_count=len(lesions),
        incomplete_coverage=_incomplete_coverage(liver, ax),
        voxel_volume_ml=vox_ml,
        spacing_mm=tuple(labels.spacing),
        lesions=lesions,
        lesion_min_volume_ml=float(min_lesion_ml),
        small_tumour_components=len(small),
        small_tumour_components_ml=float(sum(les.volume_ml for les in small)),
    )


def lesions_csv(m: Measurements) -> str:
    """The lesion list as CSV text (header row always present, one row per lesion)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LESION_CSV_FIELDS)
    for les in m.lesions:
        x, y, z = les.centroid_lps_mm
        w.writerow(
            [
                les.lesion,
                f"{les.volume_ml:.4f}",
                f"{les.longest_axial_diameter_mm:.2f}",
                les.voxels,
                f"{x:.2f}",
                f"{y:.2f}",
                f"{z:.2f}",
                les.axial_slice,
            ]
        )
    return buf.getvalue()


def write_measurements(
    m: Measurements,
    json_path: str | Path,
    csv_path: str | Path,
    overwrite: bool = False,
    extra: dict | None = None,
) -> tuple[Path, Path]:
    """Write the measurements JSON and the lesion CSV atomically.

    Args:
        m: measurements.
        json_path: output ``.json`` path (summary + lesion list + ``extra``).
        csv_path: output ``.csv`` path (one row per lesion).
        overwrite: replace existing files.
        extra: additional JSON-serialisable fields merged into the JSON (e.g. input path,
            model names, liver probability summary).

    Raises:
        OutputExistsError: an output exists and ``overwrite`` is False (nothing is written).
    """
    from livseg.io.atomic import check_writable

    check_writable(json_path, overwrite)
    check_writable(csv_path, overwrite)
    d = m.to_dict()
    if extra:
        d["extra"] = {**d.get("extra", {}), **extra}
    text = json.dumps(d, indent=2, default=_json_default) + "\n"
    write_text_atomic(json_path, text, overwrite)
    write_text_atomic(csv_path, lesions_csv(m), overwrite)
    return Path(json_path), Path(csv_path)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
