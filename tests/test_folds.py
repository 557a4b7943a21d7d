"""``--fold``: one fold's models of each fold ensemble (nnU-Net's ``-f``), the cascade that
cross-validation scored on that fold's held-out cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from livseg.cli import main
from livseg.errors import LivsegError
from livseg.infer import Cascade
from livseg.infer.pretrained import ensemble_members, locate, select_folds
from livseg.io import read_volume

# runs/cv48 (v0.10's cross-validation), fold 0's held-out volume-0 (per_case.csv): what fold 0's
# cascade labelled there, scored by `livseg cv` with PyTorch before the numpy resizing (v0.10,
# whose images agree with torch's to 1-2 float32 steps), so a few voxels may differ.
CV_FOLD0_VOLUME0 = {"liver_voxels": 2057363, "tumour_voxels": 117748, "tumour_dice": 0.63676}


def _names(paths) -> list[str]:
    return [p.name for p in paths]


def test_select_folds_keeps_the_members_of_the_given_folds():
    path = locate("runet_tumour")
    members = ensemble_members(path)
    assert len(members) == 6
    assert _names(select_folds(members, (0,), path)) == ["fold0-member0", "fold0-member1"]
    assert _names(select_folds(members, (2, 0), path)) == [
        "fold0-member0",
        "fold0-member1",
        "fold2-member0",
        "fold2-member1",
    ]
    assert select_folds(members, None, path) == members
    coarse = locate("coarse_liver")
    assert _names(select_folds(ensemble_members(coarse), (1,), coarse)) == ["fold1"]


def test_select_folds_refuses_a_missing_fold_and_a_single_checkpoint():
    path = locate("coarse_liver")
    with pytest.raises(LivsegError, match=r"no fold 3 \(it has fold\(s\) 0, 1, 2\)"):
        select_folds(ensemble_members(path), (3,), path)
    paper = locate("crunet_liver")
    with pytest.raises(LivsegError, match="--fold needs a fold ensemble"):
        select_folds(ensemble_members(paper), (0,), paper)


def test_cascade_with_one_fold_loads_that_folds_members():
    cascade = Cascade.load(device="cpu", backend="torch", folds=(1,))
    assert len(cascade.coarse.models) == 1
    assert len(cascade.liver.models) == 1
    assert len(cascade.tumour.models) == 2
    full = Cascade.load(device="cpu", backend="torch")
    assert (len(full.coarse.models), len(full.liver.models), len(full.tumour.models)) == (3, 3, 6)


def test_cli_refuses_a_fold_the_models_lack_before_any_work(tmp_path, capsys, lits_dir):
    out = tmp_path / "out"
    rc = main(["segment", str(lits_dir / "volume-3.nii.gz"), "-o", str(out), "--fold", "3"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "coarse_liver: no fold 3" in err[0]
    assert not out.exists()
    rc = main(
        ["segment", str(lits_dir / "volume-3.nii.gz"), "-o", str(out), "--paper"] + ["--fold", "0"]
    )
    assert rc == 2
    assert "--fold needs a fold ensemble" in capsys.readouterr().err
    assert not out.exists()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def test_fold0_reproduces_cross_validation_on_its_held_out_case(tmp_path, lits_dir):
    """``--fold 0`` on volume-0 (held out of fold 0) labels what the cross-validation's fold-0
    cascade labelled; any other fold's models, or all three, differ by thousands of voxels
    (the ensemble's tumour agrees with fold 0's to Dice 0.68 there)."""
    out = tmp_path / "out"
    args = ["segment", str(lits_dir / "volume-0.nii.gz"), "-o", str(out), "--fold", "0"]
    assert main([*args, "--no-overlay", "--device", "cpu"]) == 0
    labels = read_volume(out / "volume-0_seg.nii.gz", kind="label").array
    ref = read_volume(lits_dir / "segmentation-0.nii.gz", kind="label").array
    want = CV_FOLD0_VOLUME0
    assert np.count_nonzero(labels >= 1) == pytest.approx(want["liver_voxels"], rel=2e-4)
    assert np.count_nonzero(labels == 2) == pytest.approx(want["tumour_voxels"], rel=2e-3)
    assert _dice(labels == 2, ref == 2) == pytest.approx(want["tumour_dice"], abs=2e-3)
    doc = json.loads((out / "volume-0_measurements.json").read_text())
    assert doc["extra"]["members"] == {"coarse": 1, "liver": 1, "tumour": 2}


def test_cli_fold_is_repeatable_like_cvs():
    """``--fold K`` selects, as in ``livseg cv`` (where ``--folds N`` counts them)."""
    from livseg.cli import build_parser
    from livseg.cli.segment import _segment_options

    parse = build_parser().parse_args
    args = parse(["segment", "x.nii.gz", "-o", "out", "--fold", "0", "--fold", "2"])
    assert _segment_options(args).folds == (0, 2)
    assert _segment_options(parse(["segment", "x.nii.gz", "-o", "out"])).folds is None
