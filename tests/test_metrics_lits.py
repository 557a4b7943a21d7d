"""LiTS per-case scores, empty-mask rules, data-set summary, folders and the CLI."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from livseg.cli import main
from livseg.errors import InputError
from livseg.metrics import (
    DEFAULT_PENALTY,
    DEFINITIONS_VERSION,
    SUMMARY_KEYS,
    evaluate_case,
    evaluate_cases,
    evaluate_folders,
    pair_files,
    summarize,
)

SPACING = (2.0, 1.0, 1.0)


def _case(liver_box, tumour_boxes=(), shape=(12, 20, 20)):
    lab = np.zeros(shape, np.uint8)
    (z0, y0, x0), (z1, y1, x1) = liver_box
    lab[z0:z1, y0:y1, x0:x1] = 1
    for (a0, b0, c0), (a1, b1, c1) in tumour_boxes:
        lab[a0:a1, b0:b1, c0:c1] = 2
    return lab


REF = _case(((2, 2, 2), (10, 18, 18)), [((3, 4, 4), (5, 7, 7)), ((6, 10, 10), (8, 14, 14))])


def test_perfect_prediction():
    r = evaluate_case(REF, REF, SPACING, case_id="c")
    assert r.liver.dice == 1.0 and r.liver.assd == 0.0 and r.liver.msd == 0.0
    assert r.tumor.dice == 1.0 and r.tumor.rvd == 0.0
    assert r.detection.tp == 2 and r.detection.fp == 0 and r.detection.fn == 0
    assert [s.dice for s in r.lesion_scores] == [1.0, 1.0]
    assert r.tumor_burden_error == 0.0
    assert r.tumor_burden_ref == pytest.approx((2 * 3 * 3 + 2 * 4 * 4) / (8 * 16 * 16))


def test_liver_values_match_hand_counts():
    pred = REF.copy()
    pred[2:10, 2:18, 16:18] = 0  # remove 2 columns of liver: 8*16*2 = 256 voxels
    r = evaluate_case(pred, REF, SPACING)
    n_ref = 8 * 16 * 16
    n_pred = n_ref - 256
    assert r.liver.dice == pytest.approx(2 * n_pred / (n_pred + n_ref))
    assert r.liver.rvd == pytest.approx(-256 / n_ref)
    # surface moved by 2 voxels along x (1 mm): max distance is 2 mm
    assert r.liver.msd == pytest.approx(2.0)


def test_empty_prediction_penalties_and_burden():
    pred = np.zeros_like(REF)
    r = evaluate_case(pred, REF, SPACING)
    assert (r.liver.dice, r.liver.jaccard, r.liver.voe) == (0.0, 0.0, 1.0)
    assert r.liver.assd == r.liver.rmsd == r.liver.msd == r.liver.rvd == DEFAULT_PENALTY
    assert r.tumor.dice == 0.0 and r.tumor.assd == DEFAULT_PENALTY
    assert (r.detection.tp, r.detection.fp, r.detection.fn) == (0, 0, 2)
    assert r.tumor_burden_error == DEFAULT_PENALTY
    assert math.isnan(r.tumor_burden_pred)
    r = evaluate_case(pred, REF, SPACING, penalty=math.inf)
    assert r.liver.assd == math.inf


def test_empty_reference_and_both_empty():
    r = evaluate_case(REF, np.zeros_like(REF), SPACING)
    assert r.liver.dice == 0.0 and r.liver.msd == DEFAULT_PENALTY
    assert (r.detection.tp, r.detection.fp, r.detection.fn) == (0, 2, 0)
    none = np.zeros_like(REF)
    r = evaluate_case(none, none, SPACING)
    assert r.liver.dice == 0.0 and r.liver.assd == DEFAULT_PENALTY  # official: no liver
    assert r.tumor.dice == 1.0 and r.tumor.voe == 0.0 and math.isnan(r.tumor.assd)
    assert r.tumor_burden_error == 0.0


def test_no_tumour_on_either_side_gives_tumour_dice_one():
    liver_only = _case(((2, 2, 2), (10, 18, 18)))
    pred = liver_only.copy()
    pred[2:10, 2:18, 17] = 0
    r = evaluate_case(pred, liver_only, SPACING)
    assert r.tumor.dice == 1.0 and r.tumor_burden_error == 0.0
    assert r.liver.dice < 1.0


def test_summary_pools_cases():
    # case A: perfect; case B: prediction keeps slices z 2..5 only (liver halved, lesion 2 lost)
    pred_b = REF.copy()
    pred_b[6:10] = 0
    res = evaluate_cases([(REF, REF, SPACING), (pred_b, REF, SPACING)], case_ids=["a", "b"])
    s = res.summary
    assert set(SUMMARY_KEYS) <= set(s)
    a, b = res.cases
    assert s["liver_dice_per_case"] == pytest.approx((a.liver.dice + b.liver.dice) / 2)
    inter = a.liver.intersection + b.liver.intersection
    tot = a.liver.n_pred + a.liver.n_ref + b.liver.n_pred + b.liver.n_ref
    assert s["liver_dice_global"] == pytest.approx(2 * inter / tot)
    # lesions: A 2 TP; B: lesion 1 TP, lesion 2 FN -> precision 3/3, recall 3/4
    assert s["lesion_precision"] == pytest.approx(1.0)
    assert s["lesion_recall"] == pytest.approx(0.75)
    assert s["lesion_dice"] == pytest.approx(1.0)
    errs = [a.tumor_burden_error, b.tumor_burden_error]
    assert s["tumor_burden_rmse"] == pytest.approx(math.sqrt(np.mean(np.square(errs))))
    assert s["tumor_burden_max_abs_error"] == pytest.approx(max(abs(e) for e in errs))
    assert b.tumor_burden_error == pytest.approx(18 / (4 * 256) - 50 / (8 * 256))
    assert s["liver_assd"] == pytest.approx((a.liver.assd + b.liver.assd) / 2)


def test_summary_without_detection_or_tumour_uses_defaults():
    liver_only = _case(((2, 2, 2), (10, 18, 18)))
    r = evaluate_case(liver_only, liver_only, SPACING)
    s = summarize([r], penalty=123.0)
    assert s["tumor_dice_global"] == 1.0 and s["tumor_dice_per_case"] == 1.0
    assert s["lesion_dice"] == 0.0 and s["lesion_voe"] == 1.0 and s["lesion_assd"] == 123.0
    assert s["lesion_precision"] == 0.0 and s["lesion_recall"] == 0.0
    with pytest.raises(ValueError):
        summarize([])


def test_shape_mismatch_names_case():
    with pytest.raises(ValueError, match="case 'x'"):
        evaluate_case(REF[:-1], REF, SPACING, case_id="x")


# --- folders and CLI -------------------------------------------------------------------------


def _write(path, array, spacing=SPACING):
    from livseg.io import write_volume
    from livseg.volume import Volume

    write_volume(Volume.label(array, spacing), path)


@pytest.fixture()
def folders(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    pred1 = REF.copy()
    pred1[6:8, 10:14, 10:14] = 1
    _write(ref_dir / "segmentation-1.nii.gz", REF)
    _write(ref_dir / "segmentation-2.nii", REF)
    _write(pred_dir / "segmentation-1.nii.gz", pred1)  # same name
    _write(pred_dir / "volume-2.nii.gz", REF)  # LiTS CT name
    return pred_dir, ref_dir, pred1


def test_pairing_rules(folders, tmp_path):
    pred_dir, ref_dir, _ = folders
    pairs = pair_files(pred_dir, ref_dir)
    assert [(p.case_id, p.pred.name) for p in pairs] == [
        ("segmentation-1", "segmentation-1.nii.gz"),
        ("segmentation-2", "volume-2.nii.gz"),
    ]
    _write(pred_dir / "segmentation-2.nii.gz", REF)  # now ambiguous
    with pytest.raises(InputError, match="several predictions for reference segmentation-2"):
        pair_files(pred_dir, ref_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no prediction for reference segmentation-1"):
        pair_files(empty, ref_dir)
    with pytest.raises(InputError, match="no reference"):
        pair_files(pred_dir, empty)


def test_evaluate_folders_matches_array_api_and_jobs(folders):
    pred_dir, ref_dir, pred1 = folders
    res = evaluate_folders(pred_dir, ref_dir, jobs=1)
    arr = evaluate_cases(
        [(pred1, REF, SPACING), (REF, REF, SPACING)], case_ids=["segmentation-1", "segmentation-2"]
    )
    assert res.summary == pytest.approx(arr.summary)
    res2 = evaluate_folders(pred_dir, ref_dir, jobs=2)
    assert res2.summary == res.summary
    assert [c.case_id for c in res2.cases] == ["segmentation-1", "segmentation-2"]


def test_spacing_and_shape_mismatch(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    _write(ref_dir / "segmentation-5.nii.gz", REF)
    _write(pred_dir / "segmentation-5.nii.gz", REF, spacing=(2.0, 1.0, 1.5))
    with pytest.raises(InputError, match="case segmentation-5.*spacing"):
        evaluate_folders(pred_dir, ref_dir)
    (pred_dir / "segmentation-5.nii.gz").unlink()
    _write(pred_dir / "segmentation-5.nii.gz", REF[:, :-1])
    with pytest.raises(InputError, match="case segmentation-5.*shape"):
        evaluate_folders(pred_dir, ref_dir)


def test_cli_writes_csv_and_json(folders, tmp_path, capsys):
    pred_dir, ref_dir, _ = folders
    out = tmp_path / "out"
    argv = ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "liver_dice_global" in printed and "segmentation-2" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["definitions_version"] == DEFINITIONS_VERSION
    assert summary["penalty"] == DEFAULT_PENALTY
    assert set(SUMMARY_KEYS) <= set(summary)
    api = evaluate_folders(pred_dir, ref_dir)
    for key in SUMMARY_KEYS:
        assert summary[key] == pytest.approx(api.summary[key])
    with open(out / "per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["segmentation-1", "segmentation-2"]
    assert float(rows[0]["liver_dice"]) == pytest.approx(api.cases[0].liver.dice)
    assert rows[1]["prediction"].endswith("volume-2.nii.gz")
    # no overwrite without --overwrite; with it, fine
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--jobs", "2", "--penalty", "50"]) == 0
    assert json.loads((out / "summary.json").read_text())["penalty"] == 50.0
    assert main(argv + ["--overwrite", "--jobs", "0"]) == 2


def test_pairing_skips_lits_ct_images_in_reference_folder(tmp_path):
    """--ref may be a whole LiTS folder: its volume-N CT images are not references."""
    import numpy as np

    from livseg.io import write_volume
    from livseg.metrics.evaluate import pair_files
    from livseg.volume import Volume

    ref, pred = tmp_path / "ref", tmp_path / "pred"
    lab = np.zeros((3, 4, 5), np.uint8)
    lab[1, 1:3, 1:4] = 1
    for n in (0, 1):
        write_volume(Volume.label(lab, (1, 1, 1)), ref / f"segmentation-{n}.nii.gz")
        write_volume(Volume.image(lab * 100.0 - 1000, (1, 1, 1)), ref / f"volume-{n}.nii.gz")
        write_volume(Volume.label(lab, (1, 1, 1)), pred / f"segmentation-{n}.nii.gz")
    pairs = pair_files(pred, ref)
    assert [(p.case_id, p.ref.name) for p in pairs] == [
        ("segmentation-0", "segmentation-0.nii.gz"),
        ("segmentation-1", "segmentation-1.nii.gz"),
    ]


def test_cli_lesion_rule_codalab_and_intervals(folders, tmp_path, capsys):
    pred_dir, ref_dir, _ = folders
    out = tmp_path / "out"
    argv = ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out)]
    assert main(argv + ["--lesion-rule", "codalab"]) == 0
    assert "lesion rule codalab" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lesion_rule"] == "codalab"
    api = evaluate_folders(pred_dir, ref_dir, lesion_rule="codalab")
    for key in SUMMARY_KEYS:
        assert summary[key] == pytest.approx(api.summary[key])
    ci = summary["confidence_intervals"]
    assert (ci["confidence"], ci["resamples"], ci["seed"]) == (0.95, 10000, 0)
    liver = ci["metrics"]["liver_dice_per_case"]
    assert liver["n"] == 2 and liver["mean"] == pytest.approx(summary["liver_dice_per_case"])
    assert liver["low"] <= liver["mean"] <= liver["high"]
    with pytest.raises(SystemExit):  # argparse rejects an unknown rule
        main(argv + ["--overwrite", "--lesion-rule", "official"])


def test_codalab_summary_differences_by_hand():
    """The official summary formulas, on a case whose prediction has no voxel == 1."""
    ref = _case(((2, 2, 2), (10, 18, 18)), [((3, 4, 4), (5, 7, 7))])
    pred = np.zeros_like(ref)
    pred[3:5, 4:7, 4:7] = 2  # the tumour exactly, no liver label
    intended = evaluate_cases([(pred, ref, SPACING)]).summary
    codalab = evaluate_cases([(pred, ref, SPACING)], lesion_rule="codalab").summary
    n_ref_liver, n_tum = 8 * 16 * 16, 2 * 3 * 3
    # livseg: the prediction's liver is its tumour (label >= 1): Dice 2*18/(18+2048).
    assert intended["liver_dice_per_case"] == pytest.approx(2 * n_tum / (n_tum + n_ref_liver))
    # official: no voxel == 1 -> no liver: Dice 0, penalties, liver Dice global 0.
    assert codalab["liver_dice_per_case"] == 0.0 and codalab["liver_assd"] == DEFAULT_PENALTY
    assert codalab["liver_dice_global"] == 0.0
    # official burden error = ref burden - LARGE (signed, its "max error").
    assert codalab["tumor_burden_max_abs_error"] == pytest.approx(n_tum / n_ref_liver - 9001.0)
    assert intended["tumor_burden_max_abs_error"] == pytest.approx(1.0 - n_tum / n_ref_liver)
    with pytest.raises(ValueError, match="different lesion rules"):
        from livseg.metrics import evaluate_case

        summarize(
            [
                evaluate_case(pred, ref, SPACING),
                evaluate_case(pred, ref, SPACING, lesion_rule="codalab"),
            ]
        )
