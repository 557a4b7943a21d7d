"""Lesion detection as in the official LiTS scorer: components, merges, IoU matching.

Source of the rule: ``detect_lesions`` in ``program/helpers/calc_metric.py`` and its use in
``program/evaluate.py`` of github.com/PatrickChrist/lits-challenge-scoring (the version whose
``detect_lesions`` returns ``num_g_merged`` / ``num_p_merged`` and whose ``evaluate.py`` reports
``precision``, ``recall``, ``precision_greater_zero``, ``recall_greater_zero``). Re-implemented
here with sparse overlap counting instead of one full-volume comparison per lesion pair.

Algorithm, for one case:

1. Lesions are the 3-D connected components of ``label == 2`` with **6-connectivity** (faces only;
   ``scipy.ndimage.label``'s default structure, as in the official scorer), numbered in raster
   order. Only predicted components touching some reference lesion take part in matching.
2. ``I[p, g]`` = voxels shared by predicted component p and reference component g.
3. **Reference merge.** For each predicted component p in label order: every (current, possibly
   already merged) reference column g with ``I[p, g] > 0`` whose largest overlap among all
   predicted components is p (``argmax`` over p, first on ties) is merged into one reference
   group; columns of ``I`` are summed. ``n_ref_merged`` counts the components absorbed.
4. **Matching.** Each predicted component keeps only its largest-overlap (merged) reference group
   (``argmax``, first on ties).
5. **Prediction merge.** All predicted components matched to the same reference group become one
   predicted group. ``n_pred_merged`` counts the components absorbed. Groups are now one-to-one.
6. **Detection.** A matched pair is a detection when ``IoU = |P & G| / |P | G| > min_overlap``
   (strictly greater). LiTS reports ``min_overlap = 0.5`` and the "any overlap" variant
   ``min_overlap = 0`` (every matched pair).
7. Counts (official ``evaluate.py``): ``TP = detections``,
   ``FP = (n_pred - n_pred_merged) - TP``, ``FN = (n_ref - n_ref_merged) - TP``.
   Precision and recall are pooled over the data set from these counts (see
   :mod:`livseg.metrics.lits`).

Differences from the official code, all fixes of evident slips that do not change the rule: the
union in step 6 is computed from the pair's own voxels (an intermediate official version compared
masks labelled with different ids); the matching is exact for any number of components (no
``int8`` label overflow).

Empty masks: no reference lesion -> no match, every predicted lesion is a false positive; no
predicted lesion -> every reference lesion is a false negative; neither -> all counts 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

log = logging.getLogger("livseg.metrics.lesions")

#: 6-connectivity (faces) in 3-D.
STRUCTURE_6 = ndimage.generate_binary_structure(3, 1)


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """3-D connected components (6-connectivity) of a tumour mask.

    Args:
        mask: (Z, Y, X) tumour mask (nonzero = tumour).

    Returns:
        (labels, n): (Z, Y, X) int32 component ids 1..n in raster order (0 = background), and n.
        An empty mask gives all zeros and n = 0.
    """
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=STRUCTURE_6, output=np.int32)
    return labels, int(n)


@dataclass(frozen=True)
class LesionPair:
    """One matched (predicted group, reference group) pair.

    Attributes:
        pred_ids: component ids of the predicted group (ids of :func:`label_lesions`).
        ref_ids: component ids of the reference group.
        intersection: |P & G| in voxels.
        n_pred: |P| in voxels.
        n_ref: |G| in voxels.
    """

    pred_ids: tuple[int, ...]
    ref_ids: tuple[int, ...]
    intersection: int
    n_pred: int
    n_ref: int

    @property
    def iou(self) -> float:
        """Intersection over union of the two groups (> 0 for every matched pair)."""
        return self.intersection / (self.n_pred + self.n_ref - self.intersection)

    def detected(self, min_overlap: float = 0.5) -> bool:
        """True when ``iou > min_overlap`` (strict, as the official scorer)."""
        return self.iou > min_overlap


@dataclass(frozen=True)
class DetectionCounts:
    """True positives, false positives and false negatives of lesion detection."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        return DetectionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        """``TP / (TP + FP)``; 0 when there is no predicted lesion (official rule)."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        """``TP / (TP + FN)``; 0 when there is no reference lesion (official rule)."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0


@dataclass(frozen=True)
class LesionMatching:
    """Result of :func:`match_lesions` for one case.

    Attributes:
        n_pred: number of predicted components.
        n_ref: number of reference components.
        n_pred_merged: predicted components absorbed by merges (official ``num_p_merged``).
        n_ref_merged: reference components absorbed by merges (official ``num_g_merged``).
        pairs: the one-to-one matched groups, ordered by their first reference id.
    """

    n_pred: int
    n_ref: int
    n_pred_merged: int = 0
    n_ref_merged: int = 0
    pairs: tuple[LesionPair, ...] = field(default_factory=tuple)

    def detected_pairs(self, min_overlap: float = 0.5) -> list[LesionPair]:
        """The pairs with IoU > ``min_overlap``."""
        return [p for p in self.pairs if p.detected(min_overlap)]

    def counts(self, min_overlap: float = 0.5) -> DetectionCounts:
        """TP, FP, FN at ``min_overlap`` (IoU strictly greater counts as detected)."""
        if not 0.0 <= min_overlap < 1.0:
            raise ValueError(f"min_overlap must lie in [0, 1), got {min_overlap}")
        tp = len(self.detected_pairs(min_overlap))
        return DetectionCounts(
            tp=tp, fp=self.n_pred - self.n_pred_merged - tp, fn=self.n_ref - self.n_ref_merged - tp
        )


def match_lesions(
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    n_pred: int | None = None,
    n_ref: int | None = None,
) -> LesionMatching:
    """Merge and match predicted and reference lesions (official LiTS rule, module docstring).

    Args:
        pred_labels: (Z, Y, X) int component ids of the prediction (0 = background), e.g. from
            :func:`label_lesions`.
        ref_labels: (Z, Y, X) int component ids of the reference, same shape.
        n_pred: number of predicted components (default: the largest id).
        n_ref: number of reference components (default: the largest id).

    Returns:
        The matching; :meth:`LesionMatching.counts` gives TP/FP/FN at any IoU threshold.
    """
    pred_labels = np.asarray(pred_labels)
    ref_labels = np.asarray(ref_labels)
    if pred_labels.shape != ref_labels.shape:
        raise ValueError(f"label shapes differ: {pred_labels.shape} vs {ref_labels.shape}")
    n_pred = int(pred_labels.max(initial=0)) if n_pred is None else int(n_pred)
    n_ref = int(ref_labels.max(initial=0)) if n_ref is None else int(n_ref)
    if n_pred == 0 or n_ref == 0:
        return LesionMatching(n_pred=n_pred, n_ref=n_ref)

    both = (pred_labels > 0) & (ref_labels > 0)
    pv = pred_labels[both].astype(np.int64)
    rv = ref_labels[both].astype(np.int64)
    if pv.size == 0:
        return LesionMatching(n_pred=n_pred, n_ref=n_ref)
    pair_keys, pair_counts = np.unique(pv * (n_ref + 1) + rv, return_counts=True)
    p_of_pair, g_of_pair = np.divmod(pair_keys, n_ref + 1)
    p_ids, p_row = np.unique(p_of_pair, return_inverse=True)
    g_ids, g_col = np.unique(g_of_pair, return_inverse=True)
    inter = np.zeros((p_ids.size, g_ids.size), dtype=np.int64)
    inter[p_row, g_col] = pair_counts
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    ref_sizes = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)

    # 3. Reference merge: columns become groups of reference ids.
    col_groups: list[list[int]] = [[int(g)] for g in g_ids]
    n_ref_merged = 0
    for i in range(p_ids.size):
        hit = np.flatnonzero(inter[i])
        merge = [int(c) for c in hit if int(np.argmax(inter[:, c])) == i]
        if len(merge) > 1:
            keep, drop = merge[0], merge[1:]
            inter[:, keep] = inter[:, merge].sum(axis=1)
            for c in drop:
                col_groups[keep].extend(col_groups[c])
            inter = np.delete(inter, drop, axis=1)
            col_groups = [g for k, g in enumerate(col_groups) if k not in set(drop)]
            n_ref_merged += len(drop)

    # 4. Each predicted component keeps its best reference group only.
    best = np.argmax(inter, axis=1)

    # 5. Prediction merge: components matched to one reference group form one group.
    pairs = []
    n_pred_merged = 0
    for c, g_group in enumerate(col_groups):
        rows = np.flatnonzero(best == c)
        if rows.size == 0:
            continue
        n_pred_merged += rows.size - 1
        p_group = tuple(int(p_ids[r]) for r in rows)
        g_sorted = tuple(sorted(g_group))
        pairs.append(
            LesionPair(
                pred_ids=p_group,
                ref_ids=g_sorted,
                intersection=int(inter[rows, c].sum()),
                n_pred=int(pred_sizes[list(p_group)].sum()),
                n_ref=int(ref_sizes[list(g_sorted)].sum()),
            )
        )
    pairs.sort(key=lambda p: p.ref_ids[0])
    return LesionMatching(
        n_pred=n_pred,
        n_ref=n_ref,
        n_pred_merged=n_pred_merged,
        n_ref_merged=n_ref_merged,
        pairs=tuple(pairs),
    )
