"""livseg against a literal port of the official LiTS scorer (tests/lits_official.py).

* ``lesion_rule="codalab"`` must give what the official b9d13be code outputs, number for number
  (every value it writes to ``scores.txt``, unrounded), on perturbed real masks and on crafted
  cases that reach its odd branches;
* the default ``"intended"`` rule must give the TP and FP of the author's fixed code
  (veugene/lits-challenge-scoring 0ceebcf) and its FN plus, for each undetected merged reference
  group of k lesions, k - 1 (the one deliberate difference, argued in livseg.metrics.lesions).
"""

from __future__ import annotations

import math
import warnings

import lits_official as official
import numpy as np
import pytest
from lits_perturb import PAIRS, perturb, read_reference
from scipy import ndimage

from livseg.metrics import evaluate_cases, label_lesions, match_lesions

pytest.importorskip("medpy.metric.binary", reason="MedPy 0.5.2 not installed")

# livseg summary key -> official scores.txt name
OFFICIAL_NAMES = {
    "lesion_precision": "lesion_precision",
    "lesion_recall": "lesion_recall",
    "lesion_precision_greater_zero": "lesion_precision_greater_zero",
    "lesion_recall_greater_zero": "lesion_recall_greater_zero",
    "lesion_dice": "lesion_dice",
    "lesion_jaccard": "lesion_jaccard",
    "lesion_voe": "lesion_voe",
    "lesion_rvd": "lesion_rvd",
    "lesion_assd": "lesion_assd",
    "lesion_rmsd": "lesion_rmsd",
    "lesion_msd": "lesion_msd",
    "tumor_dice_per_case": "lesion_dice_per_case",
    "tumor_dice_global": "lesion_dice_global",
    "liver_dice_per_case": "liver_dice_per_case",
    "liver_dice_global": "liver_dice_global",
    "liver_jaccard": "liver_jaccard",
    "liver_voe": "liver_voe",
    "liver_rvd": "liver_rvd",
    "liver_assd": "liver_assd",
    "liver_rmsd": "liver_rmsd",
    "liver_msd": "liver_msd",
    "tumor_burden_rmse": "RMSE_Tumorburden",
    "tumor_burden_max_abs_error": "MAXERROR_Tumorburden",
}


def _official(cases):
    """Run the port on livseg (z, y, x) cases: it reads nibabel (x, y, z) int8 arrays."""
    volumes = [
        (
            np.ascontiguousarray(p.T).astype(np.int8),
            np.ascontiguousarray(r.T).astype(np.int8),
            s[::-1],
        )
        for p, r, s in cases
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the official np.mean([]) of a branch
        return official.official_scores(volumes)


def _assert_codalab_equals_official(cases):
    ours = evaluate_cases(cases, lesion_rule="codalab")
    theirs = _official(cases)
    for key, name in OFFICIAL_NAMES.items():
        assert ours.summary[key] == pytest.approx(theirs[name], rel=1e-9, abs=1e-9, nan_ok=True), (
            key
        )
    for case, det in zip(ours.cases, theirs["per_case_detection"], strict=True):
        assert (case.detection.tp, case.detection.fp, case.detection.fn) == det[0.5]
        g0 = case.detection_greater_zero
        assert (g0.tp, g0.fp, g0.fn) == det[0]
    return ours, theirs


@pytest.fixture(scope="module")
def real_cases(lits_dir):
    """The 8 perturbed real pairs, cropped to the reference's foreground box (+8 voxels)."""
    cases = []
    refs = {}
    for case, variant in PAIRS:
        path = lits_dir / f"segmentation-{case}.nii.gz"
        if not path.exists():
            pytest.skip(f"{path} is absent")
        if case not in refs:
            ref, spacing = read_reference(path)
            (box,) = ndimage.find_objects((ref > 0).astype(np.uint8))
            box = tuple(slice(max(s.start - 8, 0), s.stop + 8) for s in box)
            refs[case] = (np.ascontiguousarray(ref[box]), spacing)
        ref, spacing = refs[case]
        cases.append((perturb(ref, case, variant), ref, spacing))
    return cases


def test_codalab_rule_reproduces_official_scores_on_real_masks(real_cases):
    ours, theirs = _assert_codalab_equals_official(real_cases)
    # The perturbations reach the official code's merge branches: some lesions are merged.
    assert sum(c.lesion_matching.n_ref_merged + c.lesion_matching.n_pred_merged for c in ours.cases)
    assert ours.summary["lesion_tp"] == sum(d[0.5][0] for d in theirs["per_case_detection"])


def test_intended_rule_matches_fixed_official_code_on_real_masks(real_cases):
    for pred, ref, spacing in real_cases:
        result = evaluate_cases([(pred, ref, spacing)]).cases[0]
        m = result.lesion_matching
        # 0ceebcf's function, on nibabel-ordered int16 component labels as its evaluate.py makes.
        pl, _ = ndimage.label(pred.T == 2, output=np.int16)
        rl, n_ref = ndimage.label(ref.T == 2, output=np.int16)
        for overlap, counts in ((0.5, result.detection), (0, result.detection_greater_zero)):
            if n_ref == 0:
                continue  # 0ceebcf's early return for a reference without lesions breaks its caller
            _, _, tp, fp, fn, *_ = official.detect_lesions_0ceebcf(pl, rl, overlap)
            detected = {p.ref_ids for p in m.pairs if p.detected(overlap)}
            extra = sum(len(g) - 1 for g in m.ref_groups if g not in detected)
            assert (counts.tp, counts.fp, counts.fn) == (tp, fp, fn + extra)


def test_both_rules_match_the_ports_on_random_small_masks():
    """3000 random cases (1-D lines and small boxes) with many merges, splits and ties."""
    rng = np.random.default_rng(7)
    for trial in range(3000):
        shape = tuple(rng.integers(1, 7, size=3)) if trial % 2 else (int(rng.integers(5, 40)), 1, 1)
        ref = rng.random(shape) < rng.uniform(0.1, 0.6)
        pred = rng.random(shape) < rng.uniform(0.1, 0.6)
        pl, n_pred = ndimage.label(pred, output=np.int16)
        rl, n_ref = ndimage.label(ref, output=np.int16)
        m = match_lesions(pl.astype(np.int32), rl.astype(np.int32), n_pred, n_ref)
        for overlap in (0, 0.5):
            _, _, num_detected = official.detect_lesions(pl, rl, overlap)
            codalab = m.counts(overlap, "codalab")
            assert (codalab.tp, codalab.fp, codalab.fn) == (
                num_detected,
                n_pred - num_detected,
                n_ref - num_detected,
            )
            if n_ref:
                _, _, tp, fp, fn, *_ = official.detect_lesions_0ceebcf(pl, rl, overlap)
                detected = {p.ref_ids for p in m.pairs if p.detected(overlap)}
                extra = sum(len(g) - 1 for g in m.ref_groups if g not in detected)
                intended = m.counts(overlap)
                assert (intended.tp, intended.fp, intended.fn) == (tp, fp, fn + extra)


def _line_case(ref_line: str, pred_line: str, liver_pad: int = 2):
    """A (1, 3, N) case: liver everywhere in the middle row, tumour where the strings say T."""
    n = len(ref_line)
    ref = np.zeros((1, 3, n + 2 * liver_pad), np.uint8)
    pred = np.zeros_like(ref)
    ref[0, 1] = pred[0, 1] = 1
    for arr, line in ((ref, ref_line), (pred, pred_line)):
        arr[0, 1, liver_pad : liver_pad + n][np.array([c == "T" for c in line])] = 2
    return pred, ref, (1.0, 1.0, 1.0)


def test_codalab_summary_branches_match_official():
    """Crafted cases for the official code's odd branches, each checked against the port."""
    # Negative TP (merged group missed); lesion scores skipped for num_detected <= 0.
    _assert_codalab_equals_official([_line_case("TT....T.T..", "TT...TTTTT.")])
    # The union bug picks up another pair's voxels; one detection, scored on the wrong pair.
    _assert_codalab_equals_official([_line_case("..TT.TT...", "T.TT.TTTT.")])
    # No tumour anywhere: official tumour Dice global 0; lesion defaults.
    ours, _ = _assert_codalab_equals_official([_line_case("....", "....")])
    assert ours.summary["tumor_dice_global"] == 0.0 and ours.summary["lesion_dice"] == 0.0
    # A prediction with tumour but no voxel == 1: the official code sees no liver.
    pred, ref, sp = _line_case("TTTT", "TTTT", liver_pad=0)
    ours, _ = _assert_codalab_equals_official([(pred, ref, sp), _line_case("T...", "TT..")])
    assert ours.summary["liver_dice_per_case"] == pytest.approx(0.5 * (0.0 + 1.0))
    # Signed burden error: ref burden 1/8 - pred burden 2/8 = -1/8 in the second case only.
    ours, _ = _assert_codalab_equals_official(
        [_line_case("T...", "TT.."), _line_case("....", "....")]
    )
    assert ours.summary["tumor_burden_max_abs_error"] == pytest.approx(0.0)
    assert ours.summary["tumor_burden_rmse"] == pytest.approx(math.sqrt((1 / 8) ** 2 / 2))


def test_uint8_wrap_of_the_official_detected_mask():
    """257 reference lesions: group ids above 255 collide with low ones in the official mask."""
    ref = "T." * 257
    # Exact predictions of lesions 1 and 257 (ids 1 and 257 -> both stored as 1).
    pred = "T." + ".." * 255 + "T."
    case = _line_case(ref, pred)
    ours, _ = _assert_codalab_equals_official([case])
    det = ours.cases[0].detection
    # Official: pair (p1, g1) has union |{d == 1}| = 2 (its voxel + lesion 257's) -> IoU 1/2,
    # undetected and cleared together with lesion 257's voxel; pair (p2, g257) has union
    # |{d == 2}| + |g257| = 1 -> detected. TP 1, FP 1, FN 256; no lesion left to score (NaN).
    assert (det.tp, det.fp, det.fn) == (1, 1, 256)
    assert math.isnan(ours.summary["lesion_dice"])
    intended = evaluate_cases([case]).cases[0]
    assert (intended.detection.tp, intended.detection.fp, intended.detection.fn) == (2, 0, 255)
    assert [s.dice for s in intended.lesion_scores] == [1.0, 1.0]
    # One exact prediction of lesion 257 alone: detected, but scored against lesion 1 (Dice 0).
    only = _line_case(ref, ".." * 256 + "T.")
    ours, _ = _assert_codalab_equals_official([only])
    (scores,) = ours.cases[0].lesion_scores
    assert scores.dice == 0.0 and scores.assd == pytest.approx(512.0)


def test_label_order_is_that_of_the_nifti_file():
    """Component ids follow the (x, y, z) order of the file, as the official scorer reads it."""
    mask = np.zeros((3, 1, 3), bool)
    mask[0, 0, 2] = True  # first in (z, y, x) raster order
    mask[2, 0, 0] = True  # first in (x, y, z) order
    labels, n = label_lesions(mask.T)
    assert n == 2 and labels.T[2, 0, 0] == 1 and labels.T[0, 0, 2] == 2


def test_the_one_deliberate_difference_from_0ceebcf():
    """ref T.T.., pred TTTTT: 0ceebcf counts the missed merged group as 1 FN, livseg as 2."""
    ref = np.array([1, 0, 1, 0, 0], bool)[:, None, None]
    pred = np.ones(5, bool)[:, None, None]
    pl, _ = ndimage.label(pred, output=np.int16)
    rl, _ = ndimage.label(ref, output=np.int16)
    _, _, tp, fp, fn, *_ = official.detect_lesions_0ceebcf(pl, rl, 0.5)
    assert (tp, fp, fn) == (0, 1, 1)
    counts = match_lesions(pl.astype(np.int32), rl.astype(np.int32)).counts(0.5)
    assert (counts.tp, counts.fp, counts.fn) == (0, 1, 2)
