"""Measurements, overlays and DICOM-SEG output (livseg.report), with hand-derived values."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from livseg.errors import InputError, OutputExistsError
from livseg.report.measurements import axial_axis, max_feret_diameter, measure, write_measurements
from livseg.volume import Volume


def test_feret_rectangle_and_single_pixel():
    m = np.zeros((20, 20), bool)
    m[5:8, 4:14] = True  # 3 rows x 10 columns
    assert max_feret_diameter(m, (2.0, 0.5)) == pytest.approx(math.hypot(3 * 2.0, 10 * 0.5))
    one = np.zeros((5, 5), bool)
    one[2, 2] = True
    assert max_feret_diameter(one, (1.0, 1.0)) == pytest.approx(math.sqrt(2))
    assert max_feret_diameter(np.zeros((4, 4), bool), (1.0, 1.0)) == 0.0


def test_feret_disk_close_to_diameter():
    yy, xx = np.mgrid[-30:31, -30:31]
    disk = yy**2 + xx**2 <= 20**2
    d = max_feret_diameter(disk, (0.8, 0.8))
    # covered region: diameter 41 px plus at most the corner overhang
    assert 41 * 0.8 <= d <= 41 * 0.8 + 0.8


def _labels(spacing=(2.0, 0.5, 1.0), direction=None):
    arr = np.zeros((10, 40, 30), np.uint8)
    arr[2:8, 5:35, 5:25] = 1  # liver: 6 x 30 x 20 = 3600 voxels
    arr[3:5, 10:14, 8:11] = 2  # lesion A: 2 x 4 x 3 = 24 voxels
    arr[6, 20:22, 15:17] = 2  # lesion B: 1 x 2 x 2 = 4 voxels
    return Volume.label(arr, spacing, (10.0, 20.0, 30.0), direction)


def test_measure_hand_values():
    lab = _labels()
    m = measure(lab, min_lesion_ml=0.0)  # list every component: lesion B is 0.004 ml
    vox = 2.0 * 0.5 * 1.0 / 1000
    assert m.liver_found
    assert m.liver_volume_ml == pytest.approx(3600 * vox)
    assert m.tumour_volume_ml == pytest.approx(28 * vox)
    assert m.tumour_burden == pytest.approx(28 / 3600)
    assert m.lesion_count == 2
    a, b = m.lesions
    assert (a.lesion, a.voxels, b.voxels) == (1, 24, 4)
    assert a.volume_ml == pytest.approx(24 * vox)
    # largest axial section of A: 4 rows (0.5 mm) x 3 columns (1.0 mm)
    assert a.longest_axial_diameter_mm == pytest.approx(math.hypot(4 * 0.5, 3 * 1.0))
    assert b.longest_axial_diameter_mm == pytest.approx(math.hypot(2 * 0.5, 2 * 1.0))
    assert a.axial_slice == 3
    # centroid of A: index (3.5, 11.5, 9) -> LPS with identity direction: x = 30 + 9 * 1.0 ...
    assert a.centroid_lps_mm == pytest.approx((30 + 9 * 1.0, 20 + 11.5 * 0.5, 10 + 3.5 * 2.0))
    assert not m.incomplete_coverage


def test_measure_coverage_no_liver_and_axial_axis():
    lab = _labels()
    arr = lab.array.copy()
    arr[0, 10, 10] = 1  # liver touches the first slice
    assert measure(lab.with_array(arr)).incomplete_coverage
    empty = measure(lab.with_array(np.zeros_like(arr)))
    assert not empty.liver_found and empty.tumour_burden is None and empty.lesions == []
    assert empty.liver_volume_ml == 0.0
    # a volume whose first array axis runs left-right: the axial axis is then array axis 2
    perm = np.zeros((3, 3))
    perm[2, 0] = perm[1, 1] = perm[0, 2] = 1.0
    sagittal = Volume.label(arr, (1, 1, 1), direction=perm)
    assert axial_axis(sagittal) == 2
    assert axial_axis(lab) == 0


def test_write_measurements_json_csv(tmp_path):
    m = measure(_labels(), min_lesion_ml=0.0)
    j, c = tmp_path / "m.json", tmp_path / "l.csv"
    write_measurements(m, j, c, extra={"input": "x.nii.gz"})
    d = json.loads(j.read_text())
    assert d["lesion_count"] == 2 and d["extra"]["input"] == "x.nii.gz"
    assert d["liver_found"] is True
    rows = list(csv.DictReader(c.open()))
    assert [int(r["voxels"]) for r in rows] == [24, 4]
    with pytest.raises(OutputExistsError):
        write_measurements(m, j, tmp_path / "other.csv")
    assert not (tmp_path / "other.csv").exists()


def test_overlay_png(tmp_path):
    from livseg.report.overlay import write_overlay

    lab = _labels()
    img = Volume.image(np.where(lab.array > 0, 60.0, -1000.0), lab.spacing, lab.origin)
    out = write_overlay(img, lab, tmp_path / "o.png", reference=lab, n_slices=4)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(OutputExistsError):
        write_overlay(img, lab, out)
    bad = Volume.label(lab.array, (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="geometry"):
        write_overlay(img, bad, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_overlay_radiological_orientation():
    """A RAS-stored volume is shown like its LPS twin (patient right on the image left)."""
    from livseg.preprocess.orientation import canonical_view
    from livseg.report.overlay import choose_slices

    arr = np.zeros((4, 6, 8), np.float32)
    arr[:, :, 0] = 1.0  # array x = 0
    ras = Volume.image(arr, (1, 1, 1), direction=np.diag([1.0, -1.0, -1.0]))  # x -> R, y -> A
    view, _ = canonical_view(ras)
    # x=0 of a RAS array is the patient's far left: canonical (LPS) puts it in the last column
    assert view[0, :, -1].all() and not view[0, :, 0].any()
    mask = np.zeros((10, 2, 2), bool)
    mask[2:9] = True  # liver over canonical slices 2..8: panels from superior to inferior
    assert choose_slices(mask, 3) == [8, 5, 2]


def test_dicom_seg_real_series(tmp_path, radct_dir, lits_dir):
    """DICOM-SEG of the LiTS labels of the same series: frames placed by position."""
    import highdicom as hd

    from livseg.io import read_volume
    from livseg.report.dicom_seg import write_dicom_seg

    lab = read_volume(lits_dir / "segmentation-2.nii.gz", kind="label")
    out = write_dicom_seg(lab, radct_dir / "ct-arterial-5mm", tmp_path / "s.dcm")
    seg = hd.seg.segread(out)
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == ["Liver", "Liver tumour"]
    pa = seg.pixel_array
    assert pa.sum() == int((lab.array >= 1).sum() + (lab.array == 2).sum())
    with pytest.raises(OutputExistsError):
        write_dicom_seg(lab, radct_dir / "ct-arterial-5mm", out)


def test_dicom_seg_finds_series_files_by_the_dicom_folder_rule(tmp_path):
    """Nested and extension-less slices are referenced; a slice in a hidden folder is not."""
    pytest.importorskip("highdicom")
    import pydicom

    from livseg.io import read_volume
    from livseg.io.dicom_writer import write_dicom_series
    from livseg.report.dicom_seg import write_dicom_seg

    root = tmp_path / "ct"
    vol = Volume.image(np.zeros((4, 8, 7), np.float32), (2.5, 0.8, 0.7), (30.0, -20.0, 10.0))
    f = write_dicom_series(vol, root, uid_seed="rule", patient_name="Rule^Test")
    f[0].rename(root / "IM_no_extension")
    (root / "sub").mkdir()
    f[1].rename(root / "sub" / f[1].name)
    kept = [root / "IM_no_extension", root / "sub" / f[1].name, f[2], f[3]]
    ct = read_volume(root)
    # on the grid and in the same series, but hidden: must not be referenced
    stray = pydicom.dcmread(f[2])
    stray.SOPInstanceUID = stray.file_meta.MediaStorageSOPInstanceUID = "2.25.1"
    (root / ".old").mkdir()
    stray.save_as(root / ".old" / "x.dcm")
    arr = np.zeros(ct.shape, np.uint8)
    arr[:, 2:5, 3:6] = 1  # liver on every slice: one frame per source image
    out = write_dicom_seg(ct.with_array(arr, kind="label"), root, tmp_path / "s.dcm")
    seg = pydicom.dcmread(out)
    refs = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert {str(r.ReferencedSOPInstanceUID) for r in refs} == {
        str(pydicom.dcmread(p).SOPInstanceUID) for p in kept
    }
    assert int(seg.NumberOfFrames) == 4
