"""`livseg info` and `livseg convert`, run in-process through livseg.cli.main."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from dicom_utils import write_ct_series, write_seg

from livseg.cli import main
from livseg.info import volume_info
from livseg.io import read_volume, write_volume
from livseg.volume import Volume


def test_info_text_and_json(tmp_path, capsys):
    vol = Volume.image(
        np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 10, (2.5, 0.8, 0.7), (5.0, -3.0, 1.5)
    )
    path = write_volume(vol, tmp_path / "ct.nii.gz")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "4 x 3 x 2 (x, y, z)" in out and "LPS" in out and "-10 .. 13" in out
    assert main(["info", "--json", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [4, 3, 2] and info["spacing_mm"] == pytest.approx([0.7, 0.8, 2.5])
    assert info["origin_lps_mm"] == pytest.approx([1.5, -3.0, 5.0])
    assert info["kind"] == "image" and info["dtype"] == "int16" and info["hu_min"] == -10


def test_info_label_counts(tmp_path, capsys):
    arr = np.zeros((2, 3, 4), np.uint8)
    arr[0, 0, :2] = 1
    arr[1, 1, 1] = 2
    path = write_volume(Volume.label(arr, (2.0, 1.0, 1.0)), tmp_path / "segmentation-1.nrrd")
    info = volume_info(path)
    assert info["kind"] == "label" and info["format"] == "NRRD"
    assert info["label_counts"] == {0: 21, 1: 2, 2: 1}
    assert info["label_volumes_ml"][1] == pytest.approx(0.004)
    assert main(["info", str(path)]) == 0
    assert "label 2" in capsys.readouterr().out


def test_info_errors_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.nii.gz")]) == 2
    assert "missing.nii.gz" in capsys.readouterr().err


def test_info_and_convert_dicom_with_series_choice(tmp_path, capsys):
    a = write_ct_series(
        tmp_path / "study" / "a", n_slices=4, series_uid="1.2.3.4.1", description="arterial"
    )
    write_ct_series(tmp_path / "study" / "b", n_slices=3, series_uid="1.2.3.4.2", seed=2)
    assert main(["info", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err
    assert "1.2.3.4.1" in err and "1.2.3.4.2" in err and "--series" in err
    assert main(["info", str(tmp_path / "study"), "--series", "1.2.3.4.1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["series_uid"] == "1.2.3.4.1" and info["shape"] == [12, 16, 4]

    out = tmp_path / "ct.nii.gz"
    assert main(["convert", str(tmp_path / "study"), str(out), "--series", "1.2.3.4.1"]) == 0
    back = read_volume(out)
    np.testing.assert_array_equal(back.array, a["hu"].astype(np.float32))
    np.testing.assert_allclose(back.index_to_lps((3, 0, 0)), a["positions"][3], atol=1e-4)
    assert main(["convert", str(tmp_path / "study" / "a"), str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "study" / "a"), str(out), "--overwrite"]) == 0


def test_convert_segs(tmp_path, capsys):
    truth = write_ct_series(tmp_path / "ct", n_slices=3)
    liver = np.zeros((16, 12), bool)
    liver[2:9, 3:8] = True
    tumour = np.zeros((16, 12), bool)
    tumour[4:6, 4:6] = True
    write_seg(tmp_path / "l.dcm", [(truth["positions"][1], 1, liver)], [(1, "Liver", "Liver")])
    write_seg(tmp_path / "t.dcm", [(truth["positions"][1], 1, tumour)], [(1, "Seg", "Thing")])
    out = tmp_path / "lab.nii.gz"
    # the tumour SEG's description is not recognisable: asks for an explicit name
    assert (
        main(
            [
                "convert",
                str(tmp_path / "ct"),
                str(out),
                "--seg",
                str(tmp_path / "l.dcm"),
                "--seg",
                str(tmp_path / "t.dcm"),
            ]
        )
        == 2
    )
    assert "tumour=FILE" in capsys.readouterr().err and not out.exists()
    assert (
        main(
            [
                "convert",
                str(tmp_path / "ct"),
                str(out),
                "--seg",
                str(tmp_path / "l.dcm"),
                "--seg",
                f"tumour={tmp_path / 't.dcm'}",
            ]
        )
        == 0
    )
    lab = read_volume(out)
    assert lab.kind == "label" and nib.load(str(out)).get_data_dtype() == np.uint8
    expected = np.zeros((3, 16, 12), np.uint8)
    expected[1][liver] = 1
    expected[1][tumour] = 2
    np.testing.assert_array_equal(lab.array, expected)


def test_convert_between_formats(tmp_path):
    vol = Volume.image(np.random.default_rng(0).normal(size=(3, 4, 5)), (1.5, 1.0, 1.0))
    src = write_volume(vol, tmp_path / "a.mha")
    assert main(["convert", str(src), str(tmp_path / "a.nii")]) == 0
    back = read_volume(tmp_path / "a.nii")
    np.testing.assert_array_equal(back.array, vol.array)
    assert main(["convert", str(src), str(tmp_path / "a.png")]) == 2


# --- real data ----------------------------------------------------------------------------------


def test_real_info_small_files(shared_data, capsys):
    for sub in ("three-slice", "model-labelled"):
        for name in ("volume.nii.gz", "segmentation.nii.gz"):
            assert main(["info", str(shared_data / "extra" / sub / name)]) == 0
            out = capsys.readouterr().out
            assert ("label 1" in out) == (name == "segmentation.nii.gz")
    info = volume_info(shared_data / "extra" / "model-labelled" / "volume.nii.gz")
    assert info["orientation"] == "RAS" and info["shape"] == [122, 101, 112]


@pytest.mark.slow
def test_real_info_every_lits_file(lits_dir):
    for path in sorted(lits_dir.glob("*.nii.gz")):
        info = volume_info(path)
        assert info["kind"] == ("label" if path.name.startswith("segmentation") else "image")
        assert info["orientation"] == "LPS"
        if info["kind"] == "label":
            assert set(info["label_counts"]) <= {0, 1, 2}


def test_real_convert_arterial_series_and_segs(radct_dir, lits_dir, tmp_path, capsys):
    assert main(["info", str(radct_dir)]) == 2
    assert "30_EQP_Ax5.00mm" in capsys.readouterr().err
    assert main(["info", "--json", str(radct_dir / "ct-arterial-5mm")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [512, 512, 50] and info["spacing_mm"][2] == pytest.approx(5.0)
    assert [d["file"].endswith("dicom-00001.dcm") for d in info["dropped"]] == [True]

    ct_out, seg_out = tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz"
    assert main(["convert", str(radct_dir / "ct-arterial-5mm"), str(ct_out)]) == 0
    seg_dir = radct_dir / "seg"
    assert (
        main(
            [
                "convert",
                str(radct_dir / "ct-arterial-5mm"),
                str(seg_out),
                "--seg",
                str(seg_dir / "liver.dcm"),
                "--seg",
                str(seg_dir / "tumour.dcm"),
            ]
        )
        == 0
    )
    for ours, ref_name in ((ct_out, "volume-2.nii.gz"), (seg_out, "segmentation-2.nii.gz")):
        mine, ref = nib.load(str(ours)), nib.load(str(lits_dir / ref_name))
        assert mine.shape == ref.shape == (512, 512, 50)
        np.testing.assert_allclose(mine.affine, ref.affine, atol=1e-4)
        assert mine.get_data_dtype() == ref.get_data_dtype()
        np.testing.assert_array_equal(np.asarray(mine.dataobj), np.asarray(ref.dataobj))
