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
