"""The Python API: ``livseg.segment`` / ``Segmenter`` / ``evaluate`` / ``read`` / ``write``.

Tiny random checkpoints (through ``SegmentOptions``) keep it fast; geometry, file names and
scores are checked against values derived by hand or from the written files.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from test_infer import make_checkpoint, synthetic_ct

import livseg
from livseg.errors import InputError, LivsegError
from livseg.io.nifti import geometry_to_affine

SPACING = (2.5, 0.7, 0.9)
ORIGIN = (12.0, -30.0, 40.0)
DIRECTION = np.diag([1.0, -1.0, -1.0])


@pytest.fixture(scope="module")
def options(tmp_path_factory) -> livseg.SegmentOptions:
    root = tmp_path_factory.mktemp("api_ckpt")
    return livseg.SegmentOptions(
        liver_model=make_checkpoint(root / "liver", "densefcn_liver"),
        tumour_model=make_checkpoint(root / "tumour", "tumour"),
    )


@pytest.fixture(scope="module")
def segmenter(options) -> livseg.Segmenter:
    return livseg.Segmenter(device="cpu", options=options)


@pytest.fixture(scope="module")
def ct() -> livseg.Volume:
    hu, _ = synthetic_ct((6, 40, 48))
    return livseg.Volume.image(hu, SPACING, ORIGIN, DIRECTION)


def test_defaults_match_the_command_line():
    for fn in (livseg.segment, livseg.Segmenter):
        params = inspect.signature(fn).parameters
        assert params["device"].default == "auto" and params["model"].default == "crunet"
    assert livseg.read.__name__ == "read_volume" and livseg.write.__name__ == "write_volume"


def test_every_input_type_gives_labels_in_its_geometry(tmp_path, segmenter, ct):
    path = livseg.write(ct, tmp_path / "scan.nii.gz")
    nifti = nib.load(str(path))
    image = sitk.ReadImage(str(path))
    xyz = ct.array.transpose(2, 1, 0)  # nibabel's (i, j, k) order
    affine = geometry_to_affine(ct.spacing, ct.origin, ct.direction)
    results = {
        "path": segmenter.segment(path),
        "volume": segmenter.segment(ct),
        "nibabel": segmenter.segment(nifti),
        "simpleitk": segmenter.segment(image),
        "array+affine": segmenter.segment(xyz, affine=affine),
    }
    expected = results["path"].labels
    assert expected.geometry_mismatch(ct) is None
    assert results["path"].name == "scan" and results["volume"].name == "ct"
    for kind, r in results.items():
        assert r.labels.geometry_mismatch(ct, atol=1e-4) is None, kind
        np.testing.assert_array_equal(r.labels.array, expected.array, err_msg=kind)
    # an array with spacing only: (Z, Y, X), origin 0, identity direction; same labels, since
    # the cascade sees the same canonical voxels only when the direction is the identity
    plain = livseg.Volume.image(ct.array, SPACING)
    r = segmenter.segment(plain.array, spacing=SPACING)
    assert r.labels.shape == ct.shape and r.labels.spacing == SPACING
    assert r.labels.origin == (0.0, 0.0, 0.0) and np.allclose(r.labels.direction, np.eye(3))
    np.testing.assert_array_equal(r.labels.array, segmenter.segment(plain).labels.array)


def test_models_are_loaded_once(monkeypatch, options, ct):
    from livseg.infer.cascade import Cascade

    calls = []
    real = Cascade.load.__func__

    def counting(cls, *a, **k):
        calls.append(k.get("device"))
        return real(cls, *a, **k)

    monkeypatch.setattr(Cascade, "load", classmethod(counting))
    seg = livseg.Segmenter(device="cpu", options=options)
    for _ in range(3):
        seg.segment(ct)
    assert calls == ["cpu"]
    livseg.segment(ct, device="cpu", options=options)
    assert calls == ["cpu", "cpu"]


def test_save_writes_what_the_cli_writes(tmp_path, segmenter, ct):
    from livseg.cli import main

    path = livseg.write(ct, tmp_path / "in" / "scan.nii.gz")
    r = segmenter.segment(path)
    outs = r.save(tmp_path / "api")
    opts = segmenter.cascade
    assert (
        main(
            [
                "segment",
                str(path),
                "-o",
                str(tmp_path / "cli"),
                "--liver-model",
                opts.liver.name,
                "--tumour-model",
                opts.tumour.name,
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    names = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert sorted(p.name for p in (tmp_path / "api").iterdir()) == names
    assert sorted(p.name for p in outs.values()) == names
    a = livseg.read(outs["labels"], kind="label")
    b = livseg.read(tmp_path / "cli" / "scan_seg.nii.gz", kind="label")
    np.testing.assert_array_equal(a.array, b.array)
    assert a.geometry_mismatch(ct) is None
    with pytest.raises(livseg.errors.OutputExistsError):
        r.save(tmp_path / "api")
    with pytest.raises(InputError, match="DICOM"):
        r.save(tmp_path / "dcm", dicom_seg=True)


def test_evaluate_a_pair_by_hand_and_two_folders(tmp_path):
    ref = np.zeros((4, 10, 10), np.uint8)
    ref[1:3, 2:8, 2:8] = 1  # 72 liver voxels
    pred = np.zeros_like(ref)
    pred[1:3, 2:8, 2:6] = 1  # 48, all inside: Dice = 2 * 48 / (48 + 72) = 0.8
    pv = livseg.Volume.label(pred, (2.0, 1.0, 1.0))
    rv = livseg.Volume.label(ref, (2.0, 1.0, 1.0))
    res = livseg.evaluate(pv, rv)
    assert len(res.cases) == 1 and res.cases[0].liver.dice == pytest.approx(0.8)
    livseg.write(pv, tmp_path / "pred" / "volume-1_seg.nii.gz")
    livseg.write(rv, tmp_path / "ref" / "segmentation-1.nii.gz")
    files = livseg.evaluate(
        tmp_path / "pred" / "volume-1_seg.nii.gz", tmp_path / "ref" / "segmentation-1.nii.gz"
    )
    assert files.cases[0].liver.dice == pytest.approx(0.8)
    assert files.cases[0].case_id == "volume-1_seg.nii.gz"
    folders = livseg.evaluate(tmp_path / "pred", tmp_path / "ref")
    assert folders.cases[0].liver.dice == pytest.approx(0.8)
    assert folders.summary["liver_dice_per_case"] == pytest.approx(0.8)
    with pytest.raises(InputError, match="geometry"):
        livseg.evaluate(pv, livseg.Volume.label(ref, (1.0, 1.0, 1.0)))


def test_evaluate_file_and_folder_is_refused(tmp_path):
    pv = livseg.Volume.label(np.zeros((2, 3, 3), np.uint8), (1, 1, 1))
    livseg.write(pv, tmp_path / "ref" / "segmentation-1.nii.gz")
    with pytest.raises(InputError, match="two folders or two label volumes"):
        livseg.evaluate(tmp_path / "ref" / "segmentation-1.nii.gz", tmp_path / "ref")


def test_reference_gives_scores(segmenter, ct):
    _, truth = synthetic_ct(ct.shape)
    ref = livseg.Volume.label(truth, ct.spacing, ct.origin, ct.direction)
    r = segmenter.segment(ct, reference=ref)
    p, t = r.labels.array >= 1, truth >= 1
    dice = 2 * np.count_nonzero(p & t) / (np.count_nonzero(p) + np.count_nonzero(t))
    assert r.scores["liver_dice"] == pytest.approx(dice)
    assert livseg.evaluate(r, ref).cases[0].liver.dice == pytest.approx(dice)
    with pytest.raises(InputError, match="geometry"):
        segmenter.segment(ct, reference=livseg.Volume.label(truth, (1, 1, 1)))


@pytest.mark.parametrize(
    ("data", "kwargs", "words"),
    [
        (np.zeros((4, 5)), {"spacing": (1, 1, 1)}, "2-D array"),
        (np.zeros((4, 5, 6)), {}, "exactly one of spacing"),
        (np.zeros((4, 5, 6)), {"spacing": (1, 1, 1), "affine": np.eye(4)}, "exactly one"),
        (np.zeros((4, 5, 6)), {"spacing": (1, 0, 1)}, "three positive"),
        (np.full((4, 5, 6), np.nan), {"spacing": (1, 1, 1)}, "no finite voxel"),
        (np.full((4, 5, 6), -1000.0), {"spacing": (1, 1, 1)}, "constant"),
        (np.zeros((4, 5, 6), object), {"spacing": (1, 1, 1)}, "not numbers"),
        ([[1, 2]], {}, "unsupported input"),
    ],
)
def test_bad_in_memory_inputs(segmenter, data, kwargs, words):
    with pytest.raises(InputError, match=words):
        segmenter.segment(data, **kwargs)


def test_label_volume_and_unknown_model_are_refused(segmenter, options):
    lab = livseg.Volume.label(np.zeros((4, 5, 6), np.uint8), (1, 1, 1))
    with pytest.raises(InputError, match="label volume"):
        segmenter.segment(lab)
    with pytest.raises(LivsegError, match="crunet, densefcn"):
        livseg.Segmenter("unet", device="cpu", options=options)


def test_partial_nan_is_repaired_with_a_recorded_warning(tmp_path, segmenter, ct):
    arr = ct.array.copy()
    arr[0, 0, :5] = np.nan
    r = segmenter.segment(ct.with_array(arr))
    assert any("5 non-finite voxel(s)" in w and "-1024 HU" in w for w in r.warnings)
    outs = r.save(tmp_path)
    import json

    meta = json.loads(Path(outs["measurements"]).read_text())["extra"]
    assert meta["warnings"] == r.warnings and meta["input_kind"] == "memory"
