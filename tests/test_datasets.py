"""Dataset discovery (LiTS, MSD/nnU-Net, CSV/JSON lists) and header-only geometry checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from livseg.errors import InputError
from livseg.io import write_volume
from livseg.io.datasets import Case, check_case_geometry, discover_cases, validate_cases
from livseg.volume import Volume


def _nii(path, shape=(3, 4, 5), origin=(0.0, 0.0, 0.0), kind="image"):
    arr = np.zeros(shape)
    vol = (
        Volume.image(arr, (2.0, 1.0, 1.0), origin)
        if kind == "image"
        else Volume.label(arr.astype(np.uint8), (2.0, 1.0, 1.0), origin)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_volume(vol, path)


def _lits(folder, numbers, labels=True, gz=True):
    for n in numbers:
        ext = ".nii.gz" if gz or n % 2 else ".nii"
        _nii(folder / f"volume-{n}{ext}")
        if labels:
            _nii(folder / f"segmentation-{n}{ext}", kind="label")


def test_lits_layout_natural_order(tmp_path):
    _lits(tmp_path, [10, 2, 1], gz=False)
    _nii(tmp_path / "batch2" / "volume-3.nii.gz")  # sub-folders are searched (LiTS batches)
    _nii(tmp_path / "batch2" / "segmentation-3.nii.gz", kind="label")
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["volume-1", "volume-2", "volume-3", "volume-10"]
    assert cases[1].image.name == "volume-2.nii" and cases[1].label.name == "segmentation-2.nii"
    assert all(check_case_geometry(c) is None for c in cases)


def test_lits_missing_label(tmp_path):
    _lits(tmp_path, [0, 1])
    (tmp_path / "segmentation-1.nii.gz").unlink()
    with pytest.raises(InputError, match="'volume-1' has no label"):
        discover_cases(tmp_path)
    cases = discover_cases(tmp_path, require_labels=False)
    assert cases[1].label is None and cases[0].label is not None


def test_lits_orphan_segmentation(tmp_path):
    _lits(tmp_path, [0])
    _nii(tmp_path / "segmentation-7.nii.gz", kind="label")
    with pytest.raises(InputError, match="segmentation-7.nii.gz"):
        discover_cases(tmp_path)


def test_msd_layout_with_channel_suffix_and_hidden_files(tmp_path):
    for n in (0, 11, 3):
        _nii(tmp_path / "imagesTr" / f"liver_{n}_0000.nii.gz")
        _nii(tmp_path / "labelsTr" / f"liver_{n}.nii.gz", kind="label")
    (tmp_path / "imagesTr" / "._liver_0_0000.nii.gz").write_bytes(b"macOS junk")
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["liver_0", "liver_3", "liver_11"]
    assert cases[2].label == tmp_path / "labelsTr" / "liver_11.nii.gz"


def test_msd_dataset_json_training_list(tmp_path):
    for n in (1, 2):
        _nii(tmp_path / "imagesTr" / f"liver_{n}.nii.gz")
        _nii(tmp_path / "labelsTr" / f"liver_{n}.nii.gz", kind="label")
    _nii(tmp_path / "imagesTr" / "liver_9.nii.gz")  # not in the training list: ignored
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {
                "name": "Liver",
                "training": [
                    {"image": "./imagesTr/liver_2.nii.gz", "label": "./labelsTr/liver_2.nii.gz"},
                    {"image": "./imagesTr/liver_1.nii.gz", "label": "./labelsTr/liver_1.nii.gz"},
                ],
            }
        )
    )
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["liver_1", "liver_2"]
    assert cases[0].image == tmp_path / "imagesTr" / "liver_1.nii.gz"
    # the dataset.json itself is also accepted as a list file
    assert discover_cases(tmp_path / "dataset.json") == cases


def test_msd_errors(tmp_path):
    _nii(tmp_path / "imagesTr" / "liver_1_0000.nii.gz")
    _nii(tmp_path / "labelsTr" / "liver_1.nii.gz", kind="label")
    _nii(tmp_path / "labelsTr" / "liver_5.nii.gz", kind="label")
    with pytest.raises(InputError, match="liver_5.nii.gz"):
        discover_cases(tmp_path)
    (tmp_path / "labelsTr" / "liver_5.nii.gz").unlink()
    _nii(tmp_path / "imagesTr" / "liver_1_0001.nii.gz")
    with pytest.raises(InputError, match="channel 0001"):
        discover_cases(tmp_path)


def test_csv_list(tmp_path):
    _nii(tmp_path / "data" / "a.nii.gz")
    _nii(tmp_path / "data" / "a_seg.nii.gz", kind="label")
    _nii(tmp_path / "data" / "b.nii.gz")
    csv_path = tmp_path / "lists" / "cases.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(
        "image,label,case_id\n../data/b.nii.gz,,case2\n"
        f"{tmp_path / 'data' / 'a.nii.gz'},../data/a_seg.nii.gz,case10\n"
    )
    with pytest.raises(InputError, match="'case2' has no label"):
        discover_cases(csv_path)
    cases = discover_cases(csv_path, require_labels=False)
    assert [c.case_id for c in cases] == ["case2", "case10"]
    assert cases[1].label == (tmp_path / "lists" / "../data/a_seg.nii.gz")
    assert cases[1].label.exists()


def test_json_list_of_pairs(tmp_path):
    _nii(tmp_path / "x1.nii.gz")
    _nii(tmp_path / "x1_label.nii.gz", kind="label")
    (tmp_path / "list.json").write_text(json.dumps([["x1.nii.gz", "x1_label.nii.gz"]]))
    assert discover_cases(tmp_path / "list.json") == [
        Case("x1", tmp_path / "x1.nii.gz", tmp_path / "x1_label.nii.gz")
    ]
    (tmp_path / "bad.json").write_text(json.dumps([["x1.nii.gz", "missing.nii.gz"]]))
    with pytest.raises(InputError, match="missing.nii.gz not found"):
        discover_cases(tmp_path / "bad.json")
    (tmp_path / "dup.json").write_text(json.dumps([["x1.nii.gz", None], ["x1.nii.gz", None]]))
    with pytest.raises(InputError, match="appears twice"):
        discover_cases(tmp_path / "dup.json", require_labels=False)


def test_unknown_layout_and_missing_path(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match="unknown dataset layout"):
        discover_cases(tmp_path)
    with pytest.raises(InputError, match="not found"):
        discover_cases(tmp_path / "nope")
    with pytest.raises(InputError, match="csv"):
        discover_cases(tmp_path / "readme.txt")


def test_geometry_mismatch_names_the_case(tmp_path):
    _nii(tmp_path / "volume-4.nii.gz")
    _nii(tmp_path / "segmentation-4.nii.gz", shape=(3, 4, 6), kind="label")
    _nii(tmp_path / "volume-5.nii.gz")
    _nii(tmp_path / "segmentation-5.nii.gz", origin=(0.0, 0.0, 3.0), kind="label")
    _nii(tmp_path / "volume-6.nii.gz")
    _nii(tmp_path / "segmentation-6.nii.gz", kind="label")
    cases = discover_cases(tmp_path)
    msg = check_case_geometry(cases[0])
    assert "volume-4" in msg and "shape" in msg
    assert "origin" in check_case_geometry(cases[1])
    assert check_case_geometry(cases[2]) is None
    problems = validate_cases(cases, raise_error=False)
    assert len(problems) == 2
    with pytest.raises(InputError, match="2 case"):
        validate_cases(cases)


def test_real_lits_folder(lits_dir):
    cases = discover_cases(lits_dir)
    assert [c.case_id for c in cases] == [f"volume-{n}" for n in range(5)]
    assert validate_cases(cases) == []
