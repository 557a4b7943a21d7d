"""Lesion components, the official LiTS merge rule and detection at IoU > 0.5 / > 0."""

from __future__ import annotations

import numpy as np
import pytest

from livseg.metrics import DetectionCounts, label_lesions, match_lesions


def _match(pred_mask, ref_mask):
    pl, n_p = label_lesions(pred_mask)
    rl, n_r = label_lesions(ref_mask)
    return match_lesions(pl, rl, n_p, n_r)


def test_six_connectivity():
    m = np.zeros((4, 4, 4), bool)
    m[1, 1, 1] = m[1, 2, 2] = True  # edge contact only: two lesions
    assert label_lesions(m)[1] == 2
    m[1, 1, 2] = True  # now face-connected
    assert label_lesions(m)[1] == 1
    assert label_lesions(np.zeros((3, 3, 3), bool))[1] == 0


def test_one_prediction_spanning_two_reference_lesions_merges_them():
    ref = np.zeros((5, 5, 12), bool)
    ref[1:4, 1:4, 1:4] = True
    ref[1:4, 1:4, 5:8] = True  # gap of one voxel at x=4
    pred = np.zeros_like(ref)
    pred[1:4, 1:4, 1:8] = True  # 63 voxels covering both
    m = _match(pred, ref)
    assert (m.n_pred, m.n_ref, m.n_ref_merged, m.n_pred_merged) == (1, 2, 1, 0)
    (pair,) = m.pairs
    assert pair.ref_ids == (1, 2) and pair.intersection == 54 and pair.n_pred == 63
    assert pair.iou == pytest.approx(54 / 63)
    # Intended rule: the merged group counts for its 2 lesions (was 1/0/0 under the 13cbb25 rule).
    assert m.counts(0.5) == DetectionCounts(tp=2, fp=0, fn=0)
    # Official b9d13be: the detected merged group counts once, so one lesion is "missed".
    assert m.counts(0.5, "codalab") == DetectionCounts(tp=1, fp=0, fn=1)


def test_two_predictions_splitting_one_reference_lesion_merge():
    ref = np.zeros((5, 5, 12), bool)
    ref[1:4, 1:4, 1:8] = True
    pred = np.zeros_like(ref)
    pred[1:4, 1:4, 1:4] = True
    pred[1:4, 1:4, 5:8] = True
    m = _match(pred, ref)
    assert (m.n_pred, m.n_ref, m.n_pred_merged, m.n_ref_merged) == (2, 1, 1, 0)
    (pair,) = m.pairs
    assert pair.pred_ids == (1, 2) and pair.iou == pytest.approx(54 / 63)
    assert m.counts(0.5) == DetectionCounts(tp=1, fp=0, fn=0)


def test_iou_threshold_is_strict_and_greater_zero_variant():
    ref = np.zeros((6, 6, 12), bool)
    ref[1:5, 1:5, 1:5] = True  # 64
    half = np.zeros_like(ref)
    half[1:5, 1:5, 1:3] = True  # 32 inside: IoU exactly 0.5
    m = _match(half, ref)
    assert m.pairs[0].iou == 0.5
    assert m.counts(0.5) == DetectionCounts(tp=0, fp=1, fn=1)
    assert m.counts(0.0) == DetectionCounts(tp=1, fp=0, fn=0)
    shifted = np.zeros_like(ref)
    shifted[1:5, 1:5, 3:7] = True  # 64, I = 32, union 96: IoU 1/3
    m = _match(shifted, ref)
    assert m.pairs[0].iou == pytest.approx(1 / 3)
    assert m.counts(0.5) == DetectionCounts(0, 1, 1)
    assert m.counts(0.0) == DetectionCounts(1, 0, 0)
    bigger = np.zeros_like(ref)
    bigger[1:5, 1:5, 1:6] = True  # 80, I = 64: IoU 0.8
    assert _match(bigger, ref).counts(0.5) == DetectionCounts(1, 0, 0)


def test_reference_goes_to_its_largest_overlap_prediction():
    # p1 touches g1 (5 voxels) and g2 (3 voxels); p2 covers g2 with 10 voxels.
    ref = np.zeros((3, 3, 40), bool)
    ref[1, 1, 0:5] = True  # g1: x 0..4
    ref[1, 1, 10:23] = True  # g2: x 10..22 (13 voxels)
    pred = np.zeros_like(ref)
    pred[1, 1, 0:5] = True  # p1 part on g1 (5)
    pred[0, 1, 0:13] = True  # p1 bridge in another row (no ref there)...
    pred[1, 1, 10:13] = True  # ...reaching g2 with 3 voxels (connected via row 0)
    pred[1, 1, 14:24] = True  # p2: 10 voxels on g2 (x 14..22) + 1 outside, gap at x=13
    pl, n_p = label_lesions(pred)
    rl, n_r = label_lesions(ref)
    assert (n_p, n_r) == (2, 2)
    m = match_lesions(pl, rl, n_p, n_r)
    assert m.n_ref_merged == 0  # g2's largest overlap is p2, so g1 and g2 are not merged
    assert m.n_pred_merged == 0
    assert [(p.pred_ids, p.ref_ids) for p in m.pairs] == [((1,), (1,)), ((2,), (2,))]
    # p1 = 5 + 13 + 3 = 21 voxels, I(p1, g1) = 5 -> IoU 5/21; p2: I = 9, |p2| = 10, |g2| = 13
    assert m.pairs[0].iou == pytest.approx(5 / 21)
    assert m.pairs[1].iou == pytest.approx(9 / 14)
    assert m.counts(0.5) == DetectionCounts(tp=1, fp=1, fn=1)
    assert m.counts(0.0) == DetectionCounts(tp=2, fp=0, fn=0)


def test_false_positives_and_negatives_and_empty_sides():
    ref = np.zeros((5, 5, 20), bool)
    ref[1:3, 1:3, 1:3] = True
    pred = np.zeros_like(ref)
    pred[1:3, 1:3, 10:12] = True  # no overlap
    pred[1:3, 1:3, 15:17] = True
    m = _match(pred, ref)
    assert m.pairs == () and m.counts(0.5) == DetectionCounts(0, 2, 1)
    assert _match(np.zeros_like(ref), ref).counts(0.0) == DetectionCounts(0, 0, 1)
    assert _match(pred, np.zeros_like(ref)).counts(0.0) == DetectionCounts(0, 2, 0)
    assert _match(np.zeros_like(ref), np.zeros_like(ref)).counts() == DetectionCounts()


def test_precision_recall_rules():
    assert DetectionCounts(3, 1, 2).precision == pytest.approx(0.75)
    assert DetectionCounts(3, 1, 2).recall == pytest.approx(0.6)
    assert DetectionCounts(0, 0, 0).precision == 0.0  # official: 0 when no predicted lesion
    assert DetectionCounts(0, 0, 0).recall == 0.0
    assert DetectionCounts(1, 2, 3) + DetectionCounts(1, 1, 1) == DetectionCounts(2, 3, 4)
    with pytest.raises(ValueError):
        match_lesions(np.zeros((2, 2, 2), int), np.zeros((2, 2, 2), int)).counts(1.0)


# --- 1-D examples, both rules (T = tumour voxel; a line along x is a 1x1xN volume) -------------


def _line(text: str) -> np.ndarray:
    return np.array([c == "T" for c in text], dtype=bool)[None, None, :]


def _match_lines(ref: str, pred: str):
    return _match(_line(pred), _line(ref))


# (ref, pred, intended @0.5, intended @0, codalab @0.5, codalab @0), counts as (TP, FP, FN).
LINE_CASES = [
    # Issue example 1 (union bug): one pair (p1, g2), |P & G| = 1, true union 4 (IoU 1/4). The
    # official union counts d == p_id = 1, but d holds the pair's reference id 2: union = |g2|
    # = 1, IoU 1 -> detected.
    ("T.T.....", "..TTTT..", (0, 1, 2), (1, 0, 1), (1, 0, 1), (1, 0, 1)),
    # Issue example 2a: p1 spans g1 and g2 (merged, 2 voxels), IoU 2/5 -> missed at 0.5.
    # Intended: 2 FN (the group's lesions). Official: num_detected = 1 pair - 2 lesions = -1.
    ("T.T..", "TTTTT", (0, 1, 2), (2, 0, 0), (-1, 2, 3), (1, 0, 1)),
    # Issue example 2b: merged group detected (IoU 2/3): intended 2 TP, official 1 TP + 1 FN.
    ("T.T..", "TTT..", (2, 0, 0), (2, 0, 0), (1, 0, 1), (1, 0, 1)),
    # Issue example 3: p1 and p2 split g1 (merged, IoU 4/5); official FP = 2 components - 1.
    ("TTTTT", "TT.TT", (1, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 0)),
    # Found: p1 is a FP at x=0, so pair A = (p2, g1) [IoU 1] and B = (p3, g2) [IoU 2/4]. The
    # official union of A counts d == 2, i.e. B's 4 predicted voxels: IoU 2/6, missed; B's
    # counts d == 3 (nothing): IoU 2/2, detected. Same counts, the other lesion detected.
    ("..TT.TT...", "T.TT.TTTT.", (1, 2, 1), (2, 1, 0), (1, 2, 1), (2, 1, 0)),
    # Found: A = (p1, g1) exact; p2 spans g2 and g3 (IoU 2/5, missed). Official num_detected =
    # 2 pairs - 2 lesions = 0, so the case's detected lesion A is not scored either.
    ("TT....T.T..", "TT...TTTTT.", (1, 1, 2), (3, 0, 0), (0, 2, 3), (2, 0, 1)),
]


@pytest.mark.parametrize(("ref", "pred", "i05", "i0", "c05", "c0"), LINE_CASES)
def test_line_examples_both_rules(ref, pred, i05, i0, c05, c0):
    m = _match_lines(ref, pred)
    assert m.counts(0.5) == DetectionCounts(*i05)
    assert m.counts(0.0) == DetectionCounts(*i0)
    assert m.counts(0.5, "codalab") == DetectionCounts(*c05)
    assert m.counts(0.0, "codalab") == DetectionCounts(*c0)


def test_scored_lesions_differ_between_rules():
    # Found example above: intended scores pair A (p2 on g1); the official code scores B.
    m = _match_lines("..TT.TT...", "T.TT.TTTT.")
    assert m.scored_groups() == [((2,), (1,))]
    assert m.scored_groups("codalab") == [((3,), (2,))]
    # Issue example 1: nothing detected (true IoU 1/4), but the official code scores p1 vs g2.
    m = _match_lines("T.T.....", "..TTTT..")
    assert m.scored_groups() == [] and m.scored_groups("codalab") == [((1,), (2,))]
    # num_detected = 0 in the official code: no lesion scored although pair A was detected.
    m = _match_lines("TT....T.T..", "TT...TTTTT.")
    assert m.scored_groups() == [((1,), (1,))] and m.scored_groups("codalab") == []


def test_undetected_merged_group_counts_its_lesions():
    """The decision of livseg.metrics.lesions: recall's denominator is the reference lesions."""
    for pred in ("TTTTT", "T....", "....."):  # spanning both badly, one only, none
        m = _match_lines("T.T..", pred)
        c = m.counts(0.5)
        assert c.tp + c.fn == 2  # every reference lesion is a TP or an FN
    assert _match_lines("T.T..", "TTTTT").counts(0.5).fn == 2  # 0ceebcf would say 1


def test_unknown_rule_is_rejected():
    m = _match_lines("T", "T")
    with pytest.raises(ValueError, match="intended, codalab"):
        m.counts(0.5, "official")
