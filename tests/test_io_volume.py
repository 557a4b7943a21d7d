"""NIfTI / NRRD / MHA reading and writing with exact geometry, kind guessing and bad inputs."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from livseg.errors import InputError, OutputExistsError
from livseg.io import guess_kind, read_header, read_volume, write_volume
from livseg.io.nifti import affine_to_geometry, geometry_to_affine
from livseg.volume import Volume


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = (
        np.cos(ax),
        np.sin(ax),
        np.cos(ay),
        np.sin(ay),
        np.cos(az),
        np.sin(az),
    )
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _affine(linear, offset) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = linear
    aff[:3, 3] = offset
    return aff


AFFINES = {
    # RAS storage: i -> R, j -> A, k -> S
    "ras": _affine(np.diag([0.8, 0.7, 2.5]), [-100.0, -90.0, 40.0]),
    # LPS storage as written by ITK/dcm2niix for DICOM (the LiTS files): i -> L, j -> P
    "lps": _affine(np.diag([-0.75, -0.75, 5.0]), [198.23, 194.12, -259.875]),
    # oblique: rotated axes, anisotropic voxels
    "oblique": _affine(_rotation(0.2, -0.35, 0.5) @ np.diag([0.9, 1.1, 3.0]), [12.5, -7.25, 3.0]),
    # improper (left-handed) storage with a permutation: i -> S, j -> R, k -> P
    "permuted": _affine(np.array([[0, 0.7, 0], [0, 0, -2.0], [1.5, 0, 0]]), [1.0, 2.0, 3.0]),
}


def _write_nifti(path, data_xyz, affine, qcode=1, scode=1):
    img = nib.Nifti1Image(data_xyz, affine)
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    nib.save(img, str(path))
    return path


def _index_to_ras(affine, ijk):
    return (affine @ np.r_[ijk, 1.0])[:3]


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_nifti_geometry_and_round_trip(tmp_path, name):
    affine = AFFINES[name]
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 1000, size=(7, 6, 5)).astype(np.int16)  # (x, y, z) on disk
    src = _write_nifti(tmp_path / "ct.nii.gz", data, affine)
    vol = read_volume(src)
    assert vol.kind == "image" and vol.shape == (5, 6, 7)
    np.testing.assert_array_equal(vol.array, data.transpose(2, 1, 0).astype(np.float32))
    # every voxel's LPS position equals the NIfTI affine's RAS position with x, y negated
    for ijk in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
        ras = _index_to_ras(affine, ijk)
        lps = vol.index_to_lps(ijk[::-1])
        np.testing.assert_allclose(lps, ras * [-1, -1, 1], atol=1e-4)
    out = write_volume(vol, tmp_path / "out.nii.gz")
    back = nib.load(str(out))
    np.testing.assert_allclose(back.header.get_sform(), affine, atol=1e-5)
    np.testing.assert_allclose(back.header.get_qform(), affine, atol=1e-4)
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 1
    np.testing.assert_array_equal(np.asarray(back.dataobj), data)
    assert back.get_data_dtype() == np.int16  # whole HU values stored losslessly as int16
    again = read_volume(out)
    assert again.geometry_mismatch(vol, atol=1e-5) is None


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_geometry_agrees_with_simpleitk(tmp_path, name):
    """SimpleITK reads NIfTI into LPS: our reversed geometry must be its geometry reversed."""
    affine = AFFINES[name]
    src = _write_nifti(tmp_path / "ct.nii", np.zeros((4, 3, 2), np.int16), affine)
    vol = read_volume(src)
    img = sitk.ReadImage(str(src))
    np.testing.assert_allclose(vol.spacing, img.GetSpacing()[::-1], atol=1e-5)
    np.testing.assert_allclose(vol.origin, img.GetOrigin()[::-1], atol=1e-4)
    sitk_dir = np.array(img.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(vol.direction, sitk_dir[::-1, ::-1], atol=1e-5)
    assert vol.orientation_codes() == "".join(nib.aff2axcodes(affine))


def test_affine_conversion_is_exact_inverse():
    rng = np.random.default_rng(1)
    for _ in range(20):
        lin = rng.normal(size=(3, 3))  # includes sheared, improper matrices
        aff = _affine(lin, rng.normal(size=3) * 100)
        spacing, origin, direction = affine_to_geometry(aff)
        np.testing.assert_allclose(geometry_to_affine(spacing, origin, direction), aff, atol=1e-12)


def test_sheared_affine_kept_in_sform(tmp_path):
    lin = np.array([[0.8, 0.1, 0.0], [0.0, 0.8, 0.0], [0.0, 0.0, 2.0]])
    aff = _affine(lin, [1.0, 2.0, 3.0])
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.int16), aff)
    img.set_sform(aff, code=1)
    nib.save(img, str(tmp_path / "s.nii"))
    vol = read_volume(tmp_path / "s.nii")
    out = nib.load(str(write_volume(vol, tmp_path / "o.nii")))
    np.testing.assert_allclose(out.affine, aff, atol=1e-6)
    assert int(out.header["sform_code"]) == 1 and int(out.header["qform_code"]) == 0


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_formats_round_trip(tmp_path, suffix):
    direction = _rotation(0.3, 0.1, -0.2)
    vol = Volume.label(
        np.arange(60).reshape(3, 4, 5) % 3,
        spacing=(2.5, 0.9, 0.8),
        origin=(-40.0, 12.0, 7.5),
        direction=direction,
    )
    out = write_volume(vol, tmp_path / f"lab{suffix}")
    back = read_volume(out, kind="label")
    assert back.kind == "label" and back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.geometry_mismatch(vol, atol=1e-6) is None
    assert read_header(out).shape == (3, 4, 5)
    # NIfTI <-> NRRD keep the geometry
    nii = read_volume(write_volume(back, tmp_path / "lab.nii.gz"), kind="label")
    assert nii.geometry_mismatch(vol, atol=1e-5) is None


def test_image_storage_types(tmp_path):
    whole = Volume.image(np.array([[[-1024.0, 0.0], [1.0, 3071.0]]]), (1, 1, 1))
    frac = Volume.image(np.array([[[0.25, -3.5], [1.0, 40000.0]]]), (1, 1, 1))
    assert nib.load(str(write_volume(whole, tmp_path / "w.nii"))).get_data_dtype() == np.int16
    out = write_volume(frac, tmp_path / "f.nii")
    assert nib.load(str(out)).get_data_dtype() == np.float32
    np.testing.assert_array_equal(read_volume(out).array, frac.array)


def test_write_refuses_overwrite_and_is_atomic(tmp_path):
    vol = Volume.image(np.zeros((2, 3, 4)), (1, 1, 1))
    path = write_volume(vol, tmp_path / "a.nii.gz")
    with pytest.raises(OutputExistsError, match="a.nii.gz"):
        write_volume(vol, path)
    write_volume(vol.with_array(np.ones((2, 3, 4))), path, overwrite=True)
    assert read_volume(path).array.max() == 1.0
    assert sorted(os.listdir(tmp_path)) == ["a.nii.gz"]  # no temporary file left behind
    with pytest.raises(InputError, match="unsupported output type"):
        write_volume(vol, tmp_path / "a.png")


def test_write_with_reference(tmp_path):
    aff = AFFINES["oblique"]
    ref = _write_nifti(tmp_path / "ct.nii.gz", np.zeros((7, 6, 5), np.int16), aff, qcode=1, scode=2)
    ct = read_volume(ref)
    lab = ct.with_array(np.ones(ct.shape, np.uint8), kind="label")
    out = nib.load(str(write_volume(lab, tmp_path / "seg.nii.gz", reference=ref)))
    assert int(out.header["sform_code"]) == 2 and int(out.header["qform_code"]) == 1
    src = nib.load(str(ref))
    np.testing.assert_array_equal(out.header.get_sform(), src.header.get_sform())
    np.testing.assert_array_equal(out.header.get_qform(), src.header.get_qform())
    moved = Volume.label(lab.array, ct.spacing, (0.0, 0.0, 0.0), ct.direction)
    with pytest.raises(InputError, match="differs from the reference"):
        write_volume(moved, tmp_path / "bad.nii.gz", reference=ref)
    with pytest.raises(InputError, match="differs from the reference"):
        write_volume(moved, tmp_path / "bad.nii.gz", reference=ct)


# --- image or label ---------------------------------------------------------------------------


def test_guess_kind_rule(tmp_path):
    labels = np.array([0, 1, 2, 1], dtype=np.uint8)
    assert guess_kind(tmp_path / "segmentation-3.nii", labels) == "label"
    assert guess_kind(tmp_path / "labelsTr" / "liver_3.nii.gz", labels) == "label"
    assert guess_kind(tmp_path / "case_mask.nrrd", labels.astype(np.float32)) == "label"
    assert guess_kind(tmp_path / "volume-3.nii", labels) == "image"  # name says image
    assert guess_kind(tmp_path / "seg.nii", np.array([0, 1, 5])) == "image"  # values say image
    assert guess_kind(tmp_path / "seg.nii", np.array([0.0, 0.5])) == "image"


def test_read_label_file(tmp_path):
    data = np.zeros((4, 4, 3), np.uint8)
    data[1:3, 1:3, 1] = 2
    data[0, 0, 0] = 1
    path = _write_nifti(tmp_path / "segmentation-1.nii.gz", data, AFFINES["lps"])
    lab = read_volume(path)
    assert lab.kind == "label" and lab.array.dtype == np.uint8
    assert np.count_nonzero(lab.array == 2) == 4
    img = read_volume(path, kind="image")
    assert img.kind == "image" and img.array.dtype == np.float32
    out = nib.load(str(write_volume(lab, tmp_path / "o.nii.gz")))
    assert out.get_data_dtype() == np.uint8


def test_label_with_nan_or_fractions_rejected(tmp_path):
    data = np.zeros((3, 3, 3), np.float32)
    data[0, 0, 0] = np.nan
    path = _write_nifti(tmp_path / "nan_seg.nii", data, np.eye(4))
    with pytest.raises(InputError, match="NaN"):
        read_volume(path, kind="label")
    assert read_volume(path).kind == "image"  # guessed: NaN is not a label
    data[0, 0, 0] = 0.5
    path = _write_nifti(tmp_path / "frac_seg.nii", data, np.eye(4))
    with pytest.raises(InputError, match="non-integer"):
        read_volume(path, kind="label")
    data[0, 0, 0] = 300
    path = _write_nifti(tmp_path / "big_seg.nii", data, np.eye(4))
    with pytest.raises(InputError, match="0..255"):
        read_volume(path, kind="label")


# --- bad inputs ---------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "nope.nii.gz")


@pytest.mark.parametrize("name", ["ct.txt", "ct.dcm", "ct.png"])
def test_unsupported_extension(tmp_path, name):
    (tmp_path / name).write_bytes(b"something")
    with pytest.raises(InputError, match="unsupported file type"):
        read_volume(tmp_path / name)


def test_corrupt_nifti(tmp_path):
    (tmp_path / "bad.nii").write_bytes(os.urandom(100))
    with pytest.raises(InputError, match="bad.nii"):
        read_volume(tmp_path / "bad.nii")
    (tmp_path / "bad.nii.gz").write_bytes(b"not gzip at all" * 30)
    with pytest.raises(InputError, match="bad.nii.gz"):
        read_volume(tmp_path / "bad.nii.gz")


def test_truncated_nifti(tmp_path):
    data = np.random.default_rng(0).integers(-1000, 1000, (20, 20, 20)).astype(np.int16)
    src = _write_nifti(tmp_path / "full.nii", data, np.eye(4))
    raw = src.read_bytes()
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="cut.nii"):
        read_volume(tmp_path / "cut.nii")
    packed = gzip.compress(raw)
    (tmp_path / "cut.nii.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(InputError, match="cut.nii.gz"):
        read_volume(tmp_path / "cut.nii.gz")


def test_corrupt_nrrd(tmp_path):
    (tmp_path / "bad.nrrd").write_bytes(b"NRRD0004\ntype: short\nnonsense\n")
    with pytest.raises(InputError, match="bad.nrrd"):
        read_volume(tmp_path / "bad.nrrd")


def test_2d_and_4d_nifti(tmp_path):
    _write_nifti(tmp_path / "flat.nii", np.zeros((5, 4), np.int16), np.eye(4))
    with pytest.raises(InputError, match="2-D"):
        read_volume(tmp_path / "flat.nii")
    _write_nifti(tmp_path / "t.nii", np.zeros((5, 4, 3, 2), np.int16), np.eye(4))
    with pytest.raises(InputError, match="4-D"):
        read_volume(tmp_path / "t.nii")
    data = np.arange(60, dtype=np.int16).reshape(5, 4, 3, 1)
    _write_nifti(tmp_path / "one.nii", data, AFFINES["ras"])
    vol = read_volume(tmp_path / "one.nii")
    assert vol.shape == (3, 4, 5)
    np.testing.assert_array_equal(vol.array, data[..., 0].transpose(2, 1, 0))


def test_2d_and_4d_itk(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.int16)), str(tmp_path / "f.nrrd"))
    with pytest.raises(InputError, match="2-D"):
        read_volume(tmp_path / "f.nrrd")
    sitk.WriteImage(
        sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.int16), isVector=False),
        str(tmp_path / "t.nrrd"),
    )
    with pytest.raises(InputError, match="4-D"):
        read_volume(tmp_path / "t.nrrd")
    sitk.WriteImage(
        sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.int16), isVector=True),
        str(tmp_path / "rgb.nrrd"),
    )
    with pytest.raises(InputError, match="3 components"):
        read_volume(tmp_path / "rgb.nrrd")
    sitk.WriteImage(
        sitk.GetImageFromArray(np.ones((1, 3, 4, 5), np.int16), isVector=False),
        str(tmp_path / "one.nrrd"),
    )
    assert read_volume(tmp_path / "one.nrrd").shape == (3, 4, 5)


def test_empty_folder_is_input_error(tmp_path):
    with pytest.raises(InputError, match="empty"):
        read_volume(tmp_path)


# --- real data ----------------------------------------------------------------------------------


def test_real_lits_header_and_volume(lits_dir):
    path = lits_dir / "volume-2.nii.gz"
    header = read_header(path)
    assert header.shape == (50, 512, 512) and header.dtype == "int16"
    vol = read_volume(path)
    assert vol.kind == "image" and vol.orientation_codes() == "LPS"
    assert vol.spacing == pytest.approx((5.0, 0.748047, 0.748047), abs=1e-5)
    assert vol.origin == pytest.approx((-259.875, -194.118164, -198.232422), abs=1e-4)
    assert read_volume(lits_dir / "segmentation-2.nii.gz").kind == "label"


def test_real_round_trip_keeps_affine(shared_data, tmp_path):
    src = shared_data / "extra" / "model-labelled" / "volume.nii.gz"
    vol = read_volume(src)
    out = write_volume(vol, tmp_path / "v.nii.gz", reference=src)
    a, b = nib.load(str(src)), nib.load(str(out))
    np.testing.assert_array_equal(a.affine, b.affine)
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    out2 = write_volume(vol, tmp_path / "v2.nii.gz")  # without reference: float32-exact too
    np.testing.assert_allclose(nib.load(str(out2)).affine, a.affine, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_gzipped_nifti_is_decompressed_by_isal_with_zlibs_values(tmp_path, monkeypatch, dtype):
    """A .nii.gz is decompressed by ISA-L (the isal package, a dependency): the same voxels,
    scaling and geometry as nibabel's own gzip path gives; a cut gzip stream is one InputError."""
    from isal import igzip

    rng = np.random.default_rng(5)
    data = (rng.normal(0, 500, (37, 29, 11))).astype(dtype)
    img = nib.Nifti1Image(data, _affine(np.diag([0.7, 0.8, 2.5]), [10.0, -20.0, 30.0]))
    if dtype == np.int16:
        img.header.set_slope_inter(0.5, -1024.0)  # scaled on reading, as the file says
    path = tmp_path / "ct.nii.gz"
    nib.save(img, path)
    opened = []
    real_open = igzip.open
    monkeypatch.setattr(igzip, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    got = read_volume(path, kind="image")
    assert opened == [path]
    monkeypatch.setitem(__import__("sys").modules, "isal", None)  # nibabel's gzip instead
    want = read_volume(path, kind="image")
    np.testing.assert_array_equal(got.array, want.array)
    scaled = data * 0.5 - 1024.0 if dtype == np.int16 else data  # by hand
    np.testing.assert_array_equal(got.array, scaled.transpose(2, 1, 0))
    assert got.spacing == want.spacing and got.origin == want.origin
    np.testing.assert_array_equal(got.direction, want.direction)
    monkeypatch.undo()
    raw = path.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.nii\.gz: cannot read the NIfTI voxel data"):
        read_volume(cut, kind="image")
