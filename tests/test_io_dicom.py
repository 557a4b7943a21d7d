"""DICOM series reading and DICOM-SEG placement: synthetic series in tmp_path, then real data."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from dicom_utils import write_ct_series, write_ct_slice, write_seg

from livseg.errors import InputError
from livseg.io import lits_label_from_segs, read_dicom_seg, read_volume
from livseg.io.dicom import (
    dicom_files,
    is_dicom_file,
    plan_stack,
    scan_dicom_folder,
    select_series,
)


def _lps_of_slices(volume):
    """LPS (x, y, z) position of the first pixel of every slice of a volume."""
    return volume.index_to_lps(np.array([[k, 0, 0] for k in range(volume.shape[0])]))


# --- series geometry ----------------------------------------------------------------------------


def test_sorts_shuffled_files_and_applies_rescale(tmp_path):
    truth = write_ct_series(tmp_path / "s", n_slices=6, slope=2.0, intercept=-1000.0)
    vol = read_volume(tmp_path / "s")
    assert vol.kind == "image" and vol.array.dtype == np.float32
    assert vol.shape == (6, 16, 12)
    np.testing.assert_array_equal(vol.array, truth["hu"].astype(np.float32))
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.7))
    assert vol.origin == pytest.approx((30.0, -20.0, 10.0))  # reversed LPS
    np.testing.assert_allclose(vol.direction, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(_lps_of_slices(vol), truth["positions"], atol=1e-6)


def test_descending_positions_give_increasing_z(tmp_path):
    # slices written from head to feet (decreasing z) are still stacked along +normal
    pos = [(0.0, 0.0, 100.0 - 5.0 * k) for k in range(4)]
    truth = write_ct_series(tmp_path / "s", positions=pos, slice_spacing=5.0, shuffle=False)
    vol = read_volume(tmp_path / "s")
    assert vol.origin[0] == pytest.approx(85.0)
    np.testing.assert_array_equal(vol.array, truth["hu"][::-1].astype(np.float32))


def test_oblique_orientation_geometry(tmp_path):
    a = np.radians(20.0)
    row = (np.cos(a), np.sin(a), 0.0)
    col = (0.0, 0.0, -1.0)  # a tilted coronal-like plane
    truth = write_ct_series(tmp_path / "s", n_slices=4, row=row, col=col, slice_spacing=3.0)
    vol = read_volume(tmp_path / "s")
    np.testing.assert_allclose(_lps_of_slices(vol), truth["positions"], atol=1e-5)
    # the x axis of the array follows the row cosine, y the column cosine
    np.testing.assert_allclose(vol.direction[:, 2][::-1], truth["row"], atol=1e-6)
    np.testing.assert_allclose(vol.direction[:, 1][::-1], truth["col"], atol=1e-6)
    pixel = vol.index_to_lps((2, 3, 5))
    expected = truth["positions"][2] + 3 * 0.8 * truth["col"] + 5 * 0.7 * truth["row"]
    np.testing.assert_allclose(pixel, expected, atol=1e-5)


def test_off_grid_slice_dropped_with_warning(tmp_path, caplog):
    truth = write_ct_series(tmp_path / "s", n_slices=8, slice_spacing=5.0)
    # an extra 1.25 mm slice 68.75 mm beyond the stack: not on the 5 mm grid
    extra = truth["positions"][-1] + 68.75 * truth["normal"]
    write_ct_slice(tmp_path / "s" / "zz_extra.dcm", np.zeros((16, 12)), extra, thickness=1.25)
    with caplog.at_level(logging.WARNING, logger="livseg"):
        vol = read_volume(tmp_path / "s")
    assert vol.shape[0] == 8 and vol.spacing[0] == pytest.approx(5.0)
    np.testing.assert_array_equal(vol.array, truth["hu"].astype(np.float32))
    assert any(
        "zz_extra.dcm" in r.getMessage() and "grid" in r.getMessage() for r in caplog.records
    )


def test_detached_grid_slice_dropped(tmp_path, caplog):
    # on the 5 mm lattice but 70 mm away from the stack: dropped, not a wrong-spacing volume
    truth = write_ct_series(tmp_path / "s", n_slices=10, slice_spacing=5.0)
    extra = truth["positions"][-1] + 70.0 * truth["normal"]
    write_ct_slice(tmp_path / "s" / "zz_far.dcm", np.zeros((16, 12)), extra)
    with caplog.at_level(logging.WARNING, logger="livseg"):
        vol = read_volume(tmp_path / "s")
    assert vol.shape[0] == 10
    assert any(
        "zz_far.dcm" in r.getMessage() and "detached" in r.getMessage() for r in caplog.records
    )


def test_other_orientation_slice_dropped(tmp_path, caplog):
    truth = write_ct_series(tmp_path / "s", n_slices=6)
    write_ct_slice(
        tmp_path / "s" / "localizer.dcm",
        np.zeros((16, 12)),
        (0.0, 0.0, 60.0),
        row=(1.0, 0.0, 0.0),
        col=(0.0, 0.0, -1.0),
    )
    with caplog.at_level(logging.WARNING, logger="livseg"):
        vol = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(vol.array, truth["hu"].astype(np.float32))
    assert any(
        "localizer.dcm" in r.getMessage() and "orientation" in r.getMessage()
        for r in caplog.records
    )


def test_missing_slice_is_an_error(tmp_path):
    truth = write_ct_series(tmp_path / "s", n_slices=8)
    truth["files"][4].unlink()  # a hole in the middle: both halves are large
    truth["files"][5].unlink()
    truth["files"][3].unlink()
    with pytest.raises(InputError, match="irregular slice spacing"):
        read_volume(tmp_path / "s")


def test_gantry_tilt_is_an_error(tmp_path):
    tilt = np.radians(10.0)
    col = (0.0, np.cos(tilt), np.sin(tilt))
    # the table moves along z while the image plane is tilted: positions are off the normal
    pos = [(0.0, 0.0, 5.0 * k) for k in range(6)]
    write_ct_series(tmp_path / "s", positions=pos, col=col)
    with pytest.raises(InputError, match="gantry tilt"):
        read_volume(tmp_path / "s")


def test_inconsistent_orientations_error(tmp_path):
    write_ct_series(tmp_path / "s", n_slices=3)
    for k in range(3):
        write_ct_slice(
            tmp_path / "s" / f"cor{k}.dcm",
            np.zeros((16, 12)),
            (0.0, 2.5 * k, 0.0),
            col=(0.0, 0.0, -1.0),
        )
    with pytest.raises(InputError, match="inconsistent ImageOrientationPatient"):
        read_volume(tmp_path / "s")


def test_too_many_off_grid_slices_error(tmp_path):
    truth = write_ct_series(tmp_path / "s", n_slices=6, slice_spacing=5.0)
    for k in range(3):
        pos = truth["positions"][k] + 1.7 * truth["normal"]
        write_ct_slice(tmp_path / "s" / f"odd{k}.dcm", np.zeros((16, 12)), pos)
    with pytest.raises(InputError, match="not on one regular stack"):
        read_volume(tmp_path / "s")


def test_duplicate_positions(tmp_path, caplog):
    truth = write_ct_series(tmp_path / "s", n_slices=5)
    # a copied file (same SOP instance) is dropped
    shutil.copy(truth["files"][2], tmp_path / "s" / "copy.dcm")
    with caplog.at_level(logging.WARNING, logger="livseg"):
        assert read_volume(tmp_path / "s").shape[0] == 5
    assert any("duplicate" in r.getMessage() for r in caplog.records)
    # a different image at the same position is an error
    write_ct_slice(tmp_path / "s" / "other.dcm", np.ones((16, 12)), truth["positions"][2])
    with pytest.raises(InputError, match="same position"):
        read_volume(tmp_path / "s")


def test_single_slice_series(tmp_path):
    write_ct_series(tmp_path / "s", n_slices=1, slice_spacing=3.0)
    vol = read_volume(tmp_path / "s")
    assert vol.shape == (1, 16, 12) and vol.spacing[0] == pytest.approx(3.0)


# --- series choice and bad folders --------------------------------------------------------------


def test_several_series_need_a_uid(tmp_path):
    write_ct_series(tmp_path / "d" / "a", n_slices=4, series_uid="1.2.3.4.1", description="art")
    write_ct_series(
        tmp_path / "d" / "b", n_slices=3, series_uid="1.2.3.4.2", description="eq", seed=1
    )
    with pytest.raises(InputError) as err:
        read_volume(tmp_path / "d")
    msg = str(err.value)
    assert "1.2.3.4.1" in msg and "1.2.3.4.2" in msg and "'art'" in msg and "'eq'" in msg
    assert "4 image slice(s)" in msg and "3 image slice(s)" in msg and "--series" in msg
    assert read_volume(tmp_path / "d", series_uid="1.2.3.4.2").shape[0] == 3
    with pytest.raises(InputError, match="no series with UID 9.9"):
        read_volume(tmp_path / "d", series_uid="9.9")


def test_empty_folder(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(InputError, match="empty"):
        read_volume(tmp_path / "e")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("not DICOM")
    (tmp_path / "d" / "x.dcm").write_bytes(b"\x00" * 300)
    with pytest.raises(InputError, match="no DICOM file"):
        read_volume(tmp_path / "d")


def test_folder_with_only_non_image_dicom(tmp_path):
    write_seg(
        tmp_path / "d" / "seg.dcm",
        [((0.0, 0.0, 0.0), 1, np.ones((16, 12)))],
        [(1, "Liver", "Liver")],
    )
    with pytest.raises(InputError, match="no DICOM image series.*DICOM-SEG"):
        read_volume(tmp_path / "d")


def test_which_files_count_one_rule(tmp_path):
    """Recursive, any file name, DICOM preamble required; hidden entries and DICOMDIR skipped."""
    root = tmp_path / "s"
    truth = write_ct_series(root, n_slices=4, shuffle=False)
    f = truth["files"]
    f[0].rename(root / "IM_no_extension")
    (root / "sub" / "deeper").mkdir(parents=True)
    f[1].rename(root / "sub" / "deeper" / "slice.dcm")
    # none of these count; a stray slice at the position of slice 2 would make reading fail
    stray = dict(position=truth["positions"][2], series_uid="1.2.3.4")
    write_ct_slice(root / ".hidden.dcm", np.zeros((16, 12)), **stray)
    write_ct_slice(root / ".trash" / "old.dcm", np.zeros((16, 12)), **stray)
    write_ct_slice(root / "DICOMDIR", np.zeros((16, 12)), **stray)
    (root / "fake.dcm").write_bytes(b"\x00" * 300)  # a .dcm name without the preamble
    (root / "notes.txt").write_text("not DICOM")

    assert dicom_files(root) == sorted(
        [root / "IM_no_extension", root / "sub" / "deeper" / "slice.dcm", f[2], f[3]]
    )
    assert is_dicom_file(root / "IM_no_extension") and is_dicom_file(root / "DICOMDIR")
    assert not is_dicom_file(root / "fake.dcm") and not is_dicom_file(root / "missing")
    assert not is_dicom_file(root / "sub")  # a folder is not a DICOM file
    (series,) = scan_dicom_folder(root)
    assert len(series.slices) == 4 and series.other == []
    vol = read_volume(root)
    np.testing.assert_array_equal(vol.array, truth["hu"].astype(np.float32))
    assert dicom_files(tmp_path / "absent") == []


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "nope")


def test_plan_reports_dropped_files(tmp_path):
    truth = write_ct_series(tmp_path / "s", n_slices=5)
    write_ct_slice(
        tmp_path / "s" / "odd.dcm",
        np.zeros((16, 12)),
        truth["positions"][-1] + 7.3 * truth["normal"],
    )
    series = select_series(scan_dicom_folder(tmp_path / "s"), None, tmp_path / "s")
    stack = plan_stack(series)
    assert [p.name for p, _ in stack.dropped] == ["odd.dcm"]
    assert len(stack.slices) == 5


# --- DICOM-SEG ---------------------------------------------------------------------------------


@pytest.fixture()
def ct_with_segs(tmp_path):
    truth = write_ct_series(tmp_path / "ct", n_slices=6, slice_spacing=2.5)
    ct = read_volume(tmp_path / "ct")
    rng = np.random.default_rng(3)
    liver = np.zeros(ct.shape, bool)
    liver[1:5, 3:12, 2:10] = rng.random((4, 9, 8)) > 0.3
    tumour = np.zeros(ct.shape, bool)
    tumour[2:4, 5:8, 4:7] = True
    # frames in scrambled order; empty slices omitted, as SEG writers do
    liver_frames = [(truth["positions"][k], 1, liver[k]) for k in (3, 1, 4, 2)]
    tumour_frames = [(truth["positions"][k], 1, tumour[k]) for k in (3, 2)]
    write_seg(tmp_path / "liver.dcm", liver_frames, [(1, "Liver", "Liver")])
    write_seg(tmp_path / "tumour.dcm", tumour_frames, [(1, "Tumor", "tumor")])
    return tmp_path, ct, truth, liver, tumour


def test_read_dicom_seg_places_frames_by_position(ct_with_segs):
    tmp_path, ct, _, liver, _ = ct_with_segs
    lab = read_dicom_seg(tmp_path / "liver.dcm", ct)
    assert lab.kind == "label" and lab.same_geometry(ct)
    np.testing.assert_array_equal(lab.array, liver.astype(np.uint8))
    lab5 = read_dicom_seg(tmp_path / "liver.dcm", ct, segment_labels={1: 5})
    assert set(np.unique(lab5.array)) == {0, 5}


def test_lits_label_from_segs(ct_with_segs):
    tmp_path, ct, _, liver, tumour = ct_with_segs
    expected = np.maximum(liver.astype(np.uint8), 2 * tumour.astype(np.uint8))
    guessed = lits_label_from_segs(
        ct, [(tmp_path / "liver.dcm", None), (tmp_path / "tumour.dcm", None)]
    )
    np.testing.assert_array_equal(guessed.array, expected)
    explicit = lits_label_from_segs(ct, [(tmp_path / "tumour.dcm", 2), (tmp_path / "liver.dcm", 1)])
    np.testing.assert_array_equal(explicit.array, expected)


def test_multi_segment_and_fractional_seg(ct_with_segs):
    tmp_path, ct, truth, liver, tumour = ct_with_segs
    frames = [(truth["positions"][k], 1, liver[k]) for k in range(6) if liver[k].any()]
    frames += [(truth["positions"][k], 2, tumour[k]) for k in range(6) if tumour[k].any()]
    write_seg(
        tmp_path / "both.dcm",
        frames,
        [(1, "Liver", "Liver"), (2, "Lesion", "Neoplasm")],
        fractional=True,
    )
    lab = read_dicom_seg(tmp_path / "both.dcm", ct, {1: 1, 2: 2})
    np.testing.assert_array_equal(lab.array, np.maximum(liver, 2 * tumour.astype(np.uint8)))
    guessed = lits_label_from_segs(ct, [(tmp_path / "both.dcm", None)])
    np.testing.assert_array_equal(guessed.array, lab.array)


def test_seg_errors(ct_with_segs):
    tmp_path, ct, truth, liver, _ = ct_with_segs
    off = truth["positions"][2] + 1.1 * truth["normal"]
    write_seg(tmp_path / "off.dcm", [(off, 1, liver[2])], [(1, "Liver", "Liver")])
    with pytest.raises(InputError, match="off the reference grid"):
        read_dicom_seg(tmp_path / "off.dcm", ct)
    outside = truth["positions"][-1] + 10 * truth["normal"]
    write_seg(tmp_path / "out.dcm", [(outside, 1, liver[2])], [(1, "Liver", "Liver")])
    with pytest.raises(InputError, match="outside the reference"):
        read_dicom_seg(tmp_path / "out.dcm", ct)
    write_seg(
        tmp_path / "cor.dcm",
        [(truth["positions"][2], 1, liver[2])],
        [(1, "Liver", "Liver")],
        col=(0.0, 0.0, -1.0),
    )
    with pytest.raises(InputError, match="orientation"):
        read_dicom_seg(tmp_path / "cor.dcm", ct)
    write_seg(
        tmp_path / "sp.dcm",
        [(truth["positions"][2], 1, liver[2])],
        [(1, "Liver", "Liver")],
        pixel_spacing=(0.5, 0.5),
    )
    with pytest.raises(InputError, match="pixel spacing"):
        read_dicom_seg(tmp_path / "sp.dcm", ct)
    write_seg(
        tmp_path / "kid.dcm", [(truth["positions"][2], 1, liver[2])], [(1, "Kidney", "Kidney")]
    )
    with pytest.raises(InputError, match="liver or tumour"):
        lits_label_from_segs(ct, [(tmp_path / "kid.dcm", None)])
    with pytest.raises(InputError, match="not a DICOM-SEG"):
        read_dicom_seg(truth["files"][0], ct)
    with pytest.raises(InputError, match="not found"):
        read_dicom_seg(tmp_path / "nope.dcm", ct)


# --- real data ----------------------------------------------------------------------------------


def test_real_arterial_series_matches_lits_volume_2(radct_dir, lits_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="livseg"):
        ct = read_volume(radct_dir / "ct-arterial-5mm")
    assert any("dicom-00001.dcm" in r.getMessage() for r in caplog.records)
    ref = read_volume(lits_dir / "volume-2.nii.gz")
    assert ct.shape == ref.shape == (50, 512, 512)
    assert ct.spacing[0] == pytest.approx(5.0)
    assert ct.geometry_mismatch(ref, atol=1e-5) is None
    np.testing.assert_array_equal(ct.array, ref.array)


def test_real_segs_reproduce_lits_segmentation_2(radct_dir, lits_dir):
    ct = read_volume(radct_dir / "ct-arterial-5mm")
    lab = lits_label_from_segs(
        ct, [(radct_dir / "seg" / "liver.dcm", None), (radct_dir / "seg" / "tumour.dcm", None)]
    )
    ref = read_volume(lits_dir / "segmentation-2.nii.gz")
    assert ref.kind == "label"
    np.testing.assert_array_equal(lab.array, ref.array)
    assert np.count_nonzero(lab.array == 2) == 374


def test_real_study_folder_asks_for_series(radct_dir):
    with pytest.raises(InputError) as err:
        read_volume(radct_dir)
    msg = str(err.value)
    assert "11_AP_Ax5.00mm" in msg and "30_EQP_Ax5.00mm" in msg and "--series" in msg
    series = scan_dicom_folder(radct_dir / "ct-arterial-5mm")
    uid = select_series(series, None, radct_dir).uid
    assert read_volume(radct_dir, series_uid=uid).shape == (50, 512, 512)
