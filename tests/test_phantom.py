"""The synthetic abdominal CT phantom, its dataset writer, the DICOM CT writer and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from livseg.cli import main
from livseg.errors import InputError, LivsegError, OutputExistsError
from livseg.phantom import _make, case_seed, default_slices, make_phantom, write_phantom_dataset
from livseg.volume import Volume

SEEDS = range(6)


@pytest.fixture(scope="module")
def cases64():
    """(image, label, info) for several seeds at size 64 (fast)."""
    return {s: _make(s, 64) for s in SEEDS}


@pytest.fixture(scope="module")
def case128():
    """A case with at least one sizeable tumour, at size 128."""
    for seed in range(20):
        image, label, info = _make(seed, 128)
        if any(t["voxels"] > 100 for t in info.tumours):
            return image, label, info
    raise AssertionError("no case with a tumour of > 100 voxels among 20 seeds")


def _body(image: Volume) -> np.ndarray:
    """Patient body: above -500 HU, slice-wise hole-filled, largest component (no table)."""
    mask = image.array > -500
    lab, n = ndimage.label(mask)
    sizes = ndimage.sum(mask, lab, range(1, n + 1))
    body = lab == 1 + int(np.argmax(sizes))
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


# --- determinism and geometry -------------------------------------------------------------------


def test_same_seed_gives_identical_bytes():
    a_img, a_lab = make_phantom(11, size=64)
    b_img, b_lab = make_phantom(11, size=64)
    assert a_img.array.tobytes() == b_img.array.tobytes()
    assert a_lab.array.tobytes() == b_lab.array.tobytes()
    assert a_img.same_geometry(b_img) and a_img.same_geometry(a_lab)


def test_different_seeds_differ(cases64):
    img0, lab0, _ = cases64[0]
    img1, lab1, _ = cases64[1]
    assert not np.array_equal(img0.array, img1.array)
    assert not np.array_equal(lab0.array, lab1.array)
    assert case_seed(5, 0) != case_seed(5, 1) != case_seed(6, 0)
    assert case_seed(5, 1) == case_seed(5, 1)


def test_geometry_and_types(cases64):
    img, lab, _ = cases64[2]
    assert img.shape == lab.shape == (default_slices(64), 64, 64)
    assert img.array.dtype == np.float32 and lab.array.dtype == np.uint8
    assert img.orientation_codes() == "LPS"
    np.testing.assert_allclose(img.direction, np.eye(3))
    sz, sy, sx = img.spacing
    assert sy == sx and 350 / 64 * 0.94 < sx < 350 / 64 * 1.06
    assert sz * img.shape[0] == pytest.approx(240.0, rel=1e-3)
    # Integer HU in the scanner range.
    assert np.array_equal(img.array, np.rint(img.array))
    assert img.array.min() >= -1024 and img.array.max() <= 3071
    # The field of view is centred on the isocentre (x, y LPS of the middle ~ 0).
    centre = img.index_to_lps(((img.shape[0] - 1) / 2, 31.5, 31.5))
    assert abs(centre[0]) < 1e-6 and abs(centre[1]) < 1e-6


def test_default_slices_scale_with_size():
    assert default_slices(256) == 64
    assert default_slices(128) == 32
    assert default_slices(512) == 128
    img, _ = make_phantom(3, size=64, slices=10)
    assert img.shape == (10, 64, 64)
    assert img.spacing[0] == pytest.approx(24.0)


def test_anatomy_does_not_depend_on_the_matrix_size(cases64):
    _, lab64, _ = cases64[3]
    _, lab128 = make_phantom(3, size=128)
    ml64 = np.count_nonzero(lab64.array) * lab64.voxel_volume_ml
    ml128 = np.count_nonzero(lab128.array) * lab128.voxel_volume_ml
    assert ml64 == pytest.approx(ml128, rel=0.12)


@pytest.mark.parametrize("kwargs", [{"size": 16}, {"size": 64.0}, {"size": 64, "slices": 2}])
def test_invalid_options_are_user_errors(kwargs):
    with pytest.raises(LivsegError, match="size|slices"):
        make_phantom(0, **kwargs)


# --- labels and anatomy -------------------------------------------------------------------------


def test_labels_liver_and_tumours(cases64):
    n_tumours = []
    volumes = []
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    for _, lab, info in cases64.values():
        values = set(np.unique(lab.array).tolist())
        assert values <= {0, 1, 2} and 1 in values
        liver = lab.array > 0
        volumes.append(liver.sum() * lab.voxel_volume_ml)
        tumour = lab.array == 2
        # Per-lesion counts add up to the labelled tumour (more where lesions overlap).
        counts = [t["voxels"] for t in info.tumours]
        assert tumour.sum() <= sum(counts) and tumour.sum() >= max(counts, default=0)
        if tumour.any():
            # Tumours lie inside the liver: almost all their in-plane neighbours are liver.
            shell = ndimage.binary_dilation(tumour, in_plane) & ~tumour
            assert (lab.array[shell] > 0).mean() > 0.8
        n_tumours.append(len(info.tumours))
        # Liver sits in the upper abdomen but not at the very top (lung bases / heart there).
        zs = np.nonzero(liver.any(axis=(1, 2)))[0]
        assert zs.max() < lab.shape[0] - 1 and zs.min() > 0
    assert 0 in n_tumours and max(n_tumours) >= 2 and max(n_tumours) <= 4
    assert all(500 < v < 3500 for v in volumes), volumes
    assert np.std(volumes) / np.mean(volumes) > 0.1  # liver volume varies between cases


def test_liver_is_on_the_patients_right_and_superior(cases64):
    for img, lab, _ in cases64.values():
        body = _body(img)
        liver = lab.array > 0
        body_c = img.index_to_lps(np.argwhere(body).mean(axis=0))
        liver_c = img.index_to_lps(np.argwhere(liver).mean(axis=0))
        # LPS x grows toward the patient's left: the right side has the smaller x.
        assert liver_c[0] < body_c[0] - 20.0
        # LPS z grows superiorly: the liver is in the upper half of the abdomen.
        assert liver_c[2] > body_c[2]
        # Radiological display (imshow of array[z]): liver on the image's left half.
        assert np.argwhere(liver)[:, 2].mean() < lab.shape[2] / 2


def test_tissue_values_are_plausible(case128):
    img, lab, info = case128
    a = img.array
    liver_core = ndimage.binary_erosion(lab.array == 1, iterations=2)
    assert 80 <= a[liver_core].mean() <= 150
    body = _body(img)
    # Air outside the body, in the anterior corners of every slice.
    corners = np.concatenate([a[:, :8, :8].ravel(), a[:, :8, -8:].ravel()])
    assert corners.mean() < -900
    outside = ~ndimage.binary_dilation(body, iterations=3)
    outside[:, a.shape[1] // 2 :, :] = False  # the table lies posterior (high y)
    assert np.median(a[outside]) < -900
    # Fat: a clear share of the body between -150 and -50 HU.
    fat = (a[body] > -150) & (a[body] < -50)
    assert fat.mean() > 0.08
    assert np.median(a[body][fat]) < -50
    # Bone (spine, ribs) and gas in bowel/stomach inside the body.
    assert np.percentile(a[body], 99.9) > 400
    assert (a[body] < -900).sum() > 50
    # Noise: the liver is not flat, nor wildly noisy.
    assert 5 < a[liver_core].std() < 45
    # Tumour contrast against the liver.
    tumour = lab.array == 2
    contrast = (
        abs(a[ndimage.binary_erosion(tumour)].mean() - a[liver_core].mean())
        if ndimage.binary_erosion(tumour).any()
        else abs(a[tumour].mean() - a[liver_core].mean())
    )
    assert contrast > 30


def test_tumour_kinds_and_sizes_vary(cases64):
    tumours = [t for _, _, info in cases64.values() for t in info.tumours]
    assert {t["kind"] for t in tumours} <= {"hypo", "hyper"}
    radii = [t["radius_mm"] for t in tumours]
    assert min(radii) >= 2.4 and max(radii) <= 36
    for t in tumours:
        lo, hi = (30 - 1, 60 + 1) if t["kind"] == "hypo" else (150 - 1, 200 + 1)
        assert lo <= t["hu"] <= hi


# --- dataset writer and CLI ---------------------------------------------------------------------


def test_write_dataset_reads_back(tmp_path):
    from livseg.io import read_volume

    paths = write_phantom_dataset(tmp_path, cases=2, seed=4, size=64, slices=12)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [
            "volume-0.nii.gz",
            "segmentation-0.nii.gz",
            "volume-1.nii.gz",
            "segmentation-1.nii.gz",
            "phantom.json",
        ]
    )
    meta = json.loads((tmp_path / "phantom.json").read_text())
    assert meta["seed"] == 4 and meta["size"] == 64 and meta["slices"] == 12
    for n, rec in enumerate(meta["cases"]):
        assert rec["seed"] == case_seed(4, n)
        img, lab = make_phantom(rec["seed"], size=64, slices=12)
        back_img = read_volume(tmp_path / f"volume-{n}.nii.gz", kind="image")
        back_lab = read_volume(tmp_path / f"segmentation-{n}.nii.gz", kind="label")
        assert back_img.same_geometry(img) and back_lab.same_geometry(lab)
        np.testing.assert_array_equal(back_img.array, img.array)
        np.testing.assert_array_equal(back_lab.array, lab.array)
        liver_ml = np.count_nonzero(lab.array) * lab.voxel_volume_ml
        assert rec["liver_ml"] == pytest.approx(liver_ml, abs=0.01)
        assert rec["tumour_ml"] == pytest.approx(
            np.count_nonzero(lab.array == 2) * lab.voxel_volume_ml, abs=0.001
        )


def test_cli_writes_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "ph"
    argv = ["phantom", str(out), "--cases", "1", "--seed", "3", "--size", "64", "--slices", "8"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "phantom.json",
        "segmentation-0.nii.gz",
        "volume-0.nii.gz",
    ]
    before = (out / "volume-0.nii.gz").read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists" in err and "volume-0.nii.gz" in err
    assert (out / "volume-0.nii.gz").read_bytes() == before
    assert main([*argv, "--overwrite"]) == 0


def test_cli_rejects_bad_options(tmp_path, capsys):
    assert main(["phantom", str(tmp_path / "x"), "--cases", "0", "--size", "64"]) == 2
    assert "--cases" in capsys.readouterr().err
    assert main(["phantom", str(tmp_path / "x"), "--size", "8"]) == 2
    assert "--size" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_dicom_series(tmp_path):
    import pydicom

    from livseg.io import read_volume

    out = tmp_path / "ph"
    assert (
        main(
            [
                "phantom",
                str(out),
                "--cases",
                "1",
                "--seed",
                "9",
                "--size",
                "64",
                "--slices",
                "10",
                "--dicom",
            ]
        )
        == 0
    )
    series = out / "dicom" / "case-0"
    files = sorted(series.glob("*.dcm"))
    assert len(files) == 10
    dss = [pydicom.dcmread(f) for f in files]
    img, _ = make_phantom(case_seed(9, 0), size=64, slices=10)
    assert len({ds.StudyInstanceUID for ds in dss}) == 1
    assert len({ds.SeriesInstanceUID for ds in dss}) == 1
    assert len({ds.SOPInstanceUID for ds in dss}) == 10
    for k, ds in enumerate(sorted(dss, key=lambda d: int(d.InstanceNumber))):
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
        np.testing.assert_allclose(
            [float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, 1, 0]
        )
        np.testing.assert_allclose(
            [float(v) for v in ds.ImagePositionPatient], img.index_to_lps((k, 0, 0)), atol=1e-3
        )
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], img.spacing[1:], atol=1e-4)
        assert float(ds.SliceThickness) == pytest.approx(img.spacing[0])
        assert ds.pixel_array.dtype == np.int16
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(hu, img.array[k], atol=1.0)
    back = read_volume(series)
    assert back.geometry_mismatch(img) is None
    assert np.abs(back.array - img.array).max() <= 1.0
    meta = json.loads((out / "phantom.json").read_text())
    assert meta["cases"][0]["dicom"] == "dicom/case-0"


# --- DICOM writer ------------------------------------------------------------------------------


def _small_volume(direction=None) -> Volume:
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1500, size=(4, 6, 5)).astype(np.float32)
    return Volume.image(arr, (2.5, 0.8, 0.7), (-100.0, 20.0, -30.0), direction)


def test_dicom_writer_flipped_direction_round_trip(tmp_path):
    from livseg.io import read_volume
    from livseg.io.dicom_writer import write_dicom_series

    # y axis pointing anterior, x axis pointing right (an "RAS-like" in-plane flip).
    vol = _small_volume(np.diag([1.0, -1.0, -1.0]))
    files = write_dicom_series(vol, tmp_path / "s", uid_seed="t", series_description="flip")
    assert [f.name for f in files] == [f"slice-{k:04d}.dcm" for k in range(1, 5)]
    back = read_volume(tmp_path / "s")
    # The reader may reorder axes only if it must; with a right-handed stack it keeps them.
    assert back.geometry_mismatch(vol) is None
    np.testing.assert_array_equal(back.array, vol.array)


def test_dicom_writer_uids_are_deterministic(tmp_path):
    import pydicom

    from livseg.io.dicom_writer import write_dicom_series

    vol = _small_volume()
    a = write_dicom_series(vol, tmp_path / "a", uid_seed="seed-1", study_date="20000101")
    b = write_dicom_series(vol, tmp_path / "b", uid_seed="seed-1", study_date="20000101")
    c = write_dicom_series(vol, tmp_path / "c", uid_seed="seed-2", study_date="20000101")
    da, db, dc = (pydicom.dcmread(x[0]) for x in (a, b, c))
    assert da.SeriesInstanceUID == db.SeriesInstanceUID != dc.SeriesInstanceUID
    assert da.StudyInstanceUID == db.StudyInstanceUID != dc.StudyInstanceUID
    assert a[0].read_bytes() == b[0].read_bytes()


def test_dicom_writer_errors(tmp_path):
    from livseg.io.dicom_writer import write_dicom_series

    vol = _small_volume()
    write_dicom_series(vol, tmp_path / "s")
    with pytest.raises(OutputExistsError, match="exists"):
        write_dicom_series(vol, tmp_path / "s")
    write_dicom_series(vol.with_array(vol.array + 1), tmp_path / "s", overwrite=True)
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="other files"):
        write_dicom_series(vol, tmp_path / "s", overwrite=True)
    assert (tmp_path / "s" / "notes.txt").exists()
    label = Volume.label(np.zeros((2, 3, 3), np.uint8), (1, 1, 1))
    with pytest.raises(InputError, match="label"):
        write_dicom_series(label, tmp_path / "lab")
    hot = vol.with_array(np.full(vol.shape, 40000.0, np.float32))
    with pytest.raises(InputError, match="int16"):
        write_dicom_series(hot, tmp_path / "hot")
    sheared = np.eye(3)
    sheared[:, 0] = [np.cos(0.2), np.sin(0.2), 0.0]  # tilted slice axis
    with pytest.raises(InputError, match="perpendicular"):
        write_dicom_series(_small_volume(sheared), tmp_path / "tilt")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_dicom_writer_replaces_only_folders_of_dicom_files(tmp_path):
    """``overwrite`` replaces a folder of DICOM files (any names), nothing else."""
    import pydicom

    from livseg.io.dicom_writer import write_dicom_series

    vol = _small_volume()
    old = write_dicom_series(vol, tmp_path / "s", uid_seed="old")
    old_uid = pydicom.dcmread(old[0]).SeriesInstanceUID
    old[0].rename(tmp_path / "s" / "IM0001")  # DICOM without an extension still counts
    files = write_dicom_series(vol, tmp_path / "s", uid_seed="new", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [p.name for p in files]
    new_uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    assert new_uid != old_uid

    for name, make in [
        ("fake.dcm", lambda p: p.write_bytes(b"\x00" * 300)),  # .dcm name, not DICOM
        (".hidden", lambda p: p.write_bytes(files[0].read_bytes())),  # hidden, even if DICOM
        ("sub", lambda p: p.mkdir()),  # a sub-folder
    ]:
        extra = tmp_path / "s" / name
        make(extra)
        with pytest.raises(OutputExistsError, match="other files"):
            write_dicom_series(vol, tmp_path / "s", overwrite=True)
        assert extra.exists() and pydicom.dcmread(files[1]).SeriesInstanceUID == new_uid
        if extra.is_dir():
            extra.rmdir()
        else:
            extra.unlink()
