"""Lesion detection of the LiTS scorer: components, merges, IoU matching, two counting rules.

Provenance. The official LiTS scorer is ``detect_lesions`` in ``program/helpers/calc_metric.py``
with its counting in ``program/evaluate.py`` of github.com/PatrickChrist/lits-challenge-scoring,
written by Eugene Vorontsov. Its final code is branch ``miccai`` at commit b9d13be (= ``master``,
090307d, plus a crash fix for references without lesions); that is the code the CodaLab
leaderboard ran. Its author later fixed the counting in his fork,
github.com/veugene/lits-challenge-scoring, branch ``clinical_eval``: commit 955fa06 ("Fixed issue
with counting of TP, FP, FN when there are merge errors, introduced by commit 2259517") and commit
0ceebcf ("Fix union calculation during detection"). Commit 2259517 (in the official history) states
the intent: "merged reference lesions now count for the original number of lesions whereas
previously the merged aggregate counted as a single lesion". livseg re-implements both rules with
sparse overlap counting; none of that code is copied here.

Matching (identical in b9d13be and 0ceebcf), for one case:

1. Lesions are the 3-D connected components of ``label == 2`` with **6-connectivity** (faces
   only; ``scipy.ndimage.label``'s default), numbered in raster order of the array given.
   :func:`livseg.metrics.lits.evaluate_case` labels the (x, y, z) view of livseg's (z, y, x)
   arrays, i.e. the voxel order of a NIfTI file as nibabel reads it, so that ids (which decide
   ties and the official code's bugs) are those of the official scorer.
2. ``I[p, g]`` = voxels shared by predicted component p and reference component g.
3. **Reference merge.** Each reference component g touched by a prediction has an owner, the
   predicted component of largest overlap (``argmax`` over p, lowest id on ties); all reference
   components with the same owner form one reference group (the official code merges column by
   column, predicted component by component; the result is this grouping). A group's id is its
   lowest component id. Untouched reference components are groups of one.
4. **Matching.** Each predicted component touching the reference keeps only its largest-overlap
   reference group (``argmax``, lowest group id on ties).
5. **Prediction merge.** The predicted components matched to one reference group form one
   predicted group. Groups are now paired one to one.
6. **Detection.** A pair is detected when ``IoU = |P & G| / |P | G| > min_overlap`` (strictly
   greater). LiTS reports ``min_overlap = 0.5`` and the "greater zero" variant ``min_overlap = 0``
   (every pair).

Counting, rule ``"intended"`` (livseg's default): the rule of 0ceebcf, without its optional
dilation of the reference (commit 571bb50 dilates the reference by one voxel in the axial plane
before labelling; the official scorer never did):

* ``TP`` = reference components in detected groups (a merged group counts for its number of
  lesions, as 2259517 intends); ``FN = n_ref - TP``;
* ``FP`` = predicted components not in a detected group (unmatched ones and those of undetected
  pairs, as 0ceebcf: ``len(p_id_fp)`` plus the merged predicted components of each miss);
* the IoU is that of the pair's own voxels (0ceebcf's union fix).

Decision where 0ceebcf and its stated intent differ: 0ceebcf counts an **undetected** (or
unmatched) merged reference group of k lesions as **one** false negative (its ``g_id_detected``
holds only the group's first id until a detection adds the others) but a detected one as k true
positives.
livseg counts k false negatives, as 2259517 states. Reasons: (a) ``TP + FN`` is then the number of
reference lesions in every case, so recall is the fraction of reference lesions found and its
denominator does not depend on the prediction; (b) with one FN per undetected group, a prediction
that spans two lesions badly scores better (ref ``T.T..``, pred ``TTTTT``: 1 FN) than one that
misses both (2 FN); (c) a group is merged only because a prediction touched it, so merging must
not change how many reference lesions exist.

Counting, rule ``"codalab"``: what b9d13be computes, bugs included, so that results can be set
beside published leaderboard figures. ``num_detected`` starts at the number of pairs; each
undetected pair subtracts its number of reference lesions; then ``TP = num_detected``,
``FP = n_pred - TP``, ``FN = n_ref - TP``. The bugs reproduced:

* the union of a pair is ``|(d == p_id) | (m == g_id)|``, where ``d`` holds the predicted voxels
  relabelled with their *reference* group id: it counts the voxels of whichever pairs' reference
  group id equals this pair's predicted id (often none), so the IoU is usually
  ``|P & G| / |G|``. This comparison is in the final official code (b9d13be and ``master``),
  not an intermediate version; 0ceebcf fixed it (``d == g_id``);
* an undetected pair subtracts its number of reference lesions, a detected one adds only one:
  TP can be negative (ref ``T.T..``, pred ``TTTTT``: TP -1, FP 2, FN 3);
* merged predicted components are not subtracted from FP (ref ``TTTTT``, pred ``TT.TT``: FP 1);
* ``d`` is ``uint8``: group ids above 255 wrap modulo 256 and collide with other lesions' ids,
  in the union, in the removal of undetected pairs (``d[d == g_id] = 0``) and in the per-lesion
  scores (:meth:`LesionMatching.scored_groups`);
* per-lesion scores are computed only when the case's ``num_detected`` at IoU > 0.5 is positive.

The official code labels components as ``int16``; cases with more than 32767 components are out of
its range and of this reproduction's.

Empty masks (both rules): no reference lesion -> no pair, every predicted lesion is a false
positive; no predicted lesion -> every reference lesion is a false negative; neither -> all 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

log = logging.getLogger("livseg.metrics.lesions")

#: 6-connectivity (faces) in 3-D.
STRUCTURE_6 = ndimage.generate_binary_structure(3, 1)

#: IoU threshold of a lesion detection (strictly greater), as LiTS.
DETECTION_IOU = 0.5

LesionRule = Literal["intended", "codalab"]
#: The lesion counting rules (module docstring); the first is the default.
LESION_RULES: tuple[str, ...] = ("intended", "codalab")

#: The official ``detected_mask`` is uint8: ids are stored modulo this.
_UINT8_RANGE = 256


def check_rule(rule: str) -> str:
    """Return ``rule`` if it is one of :data:`LESION_RULES`, else raise ValueError naming them."""
    if rule not in LESION_RULES:
        raise ValueError(f"lesion rule must be one of {', '.join(LESION_RULES)}; got {rule!r}")
    return rule


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
        pred_ids: component ids of the predicted group, ascending (ids of :func:`label_lesions`).
        ref_ids: component ids of the reference group, ascending; ``ref_ids[0]`` is its id.
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

    def detected(self, min_overlap: float = DETECTION_IOU) -> bool:
        """True when ``iou > min_overlap`` (strict, as the official scorer)."""
        return self.iou > min_overlap


@dataclass(frozen=True)
class DetectionCounts:
    """True positives, false positives and false negatives of lesion detection.

    Under the ``"codalab"`` rule ``tp`` can be negative (module docstring).
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        return DetectionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        """``TP / (TP + FP)``; 0 when the denominator is 0 (official rule)."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        """``TP / (TP + FN)``; 0 when the denominator is 0 (official rule)."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0


@dataclass(frozen=True)
class LesionMatching:
    """Result of :func:`match_lesions` for one case.

    Attributes:
        n_pred: number of predicted components.
        n_ref: number of reference components.
        pairs: the one-to-one matched groups, ordered by their lowest predicted id (the order in
            which the official code examines them).
        ref_groups: every reference group of more than one component (matched or not).
        overlaps: ``{(predicted component, reference group id): voxels}`` for every touching
            combination (used by the ``"codalab"`` rule's union).
    """

    n_pred: int
    n_ref: int
    pairs: tuple[LesionPair, ...] = ()
    ref_groups: tuple[tuple[int, ...], ...] = ()
    overlaps: dict[tuple[int, int], int] = field(default_factory=dict)

    @property
    def n_pred_merged(self) -> int:
        """Predicted components absorbed by merges (``sum(len(pred_ids) - 1)`` over pairs)."""
        return sum(len(p.pred_ids) - 1 for p in self.pairs)

    @property
    def n_ref_merged(self) -> int:
        """Reference components absorbed by merges, matched or not."""
        return sum(len(g) - 1 for g in self.ref_groups)

    def detected_pairs(self, min_overlap: float = DETECTION_IOU) -> list[LesionPair]:
        """The pairs with IoU > ``min_overlap`` (true IoU, the ``"intended"`` rule)."""
        return [p for p in self.pairs if p.detected(min_overlap)]

    def counts(self, min_overlap: float = DETECTION_IOU, rule: str = "intended") -> DetectionCounts:
        """TP, FP, FN at ``min_overlap`` under ``rule`` (module docstring).

        Raises:
            ValueError: ``min_overlap`` outside [0, 1) or unknown rule.
        """
        if not 0.0 <= min_overlap < 1.0:
            raise ValueError(f"min_overlap must lie in [0, 1), got {min_overlap}")
        if check_rule(rule) == "codalab":
            missed = _codalab_trim(self, min_overlap)[1]
            tp = len(self.pairs) - sum(len(p.ref_ids) for p in missed)
            return DetectionCounts(tp=tp, fp=self.n_pred - tp, fn=self.n_ref - tp)
        found = self.detected_pairs(min_overlap)
        tp = sum(len(p.ref_ids) for p in found)
        fp = self.n_pred - sum(len(p.pred_ids) for p in found)
        return DetectionCounts(tp=tp, fp=fp, fn=self.n_ref - tp)

    def scored_groups(self, rule: str = "intended") -> list[tuple[tuple[int, ...], ...]]:
        """The (predicted ids, reference ids) whose segmentation scores the rule reports.

        ``"intended"``: every pair detected at IoU > 0.5. ``"codalab"``: what the official
        ``compute_segmentation_scores(detected_mask, mod_ref_mask)`` compares, only when the
        case's ``num_detected`` at IoU > 0.5 is positive: for each value ``v`` left in the uint8
        ``detected_mask``, the predicted components stored as ``v`` against the reference group
        whose id is exactly ``v`` (empty when there is none; scored with the penalties).

        Returns:
            ``[(pred_ids, ref_ids), ...]``; ids of :func:`label_lesions`.
        """
        if check_rule(rule) == "intended":
            return [(p.pred_ids, p.ref_ids) for p in self.detected_pairs(DETECTION_IOU)]
        if self.counts(DETECTION_IOU, "codalab").tp <= 0:
            return []
        kept = _codalab_trim(self, DETECTION_IOU)[0]
        by_value: dict[int, list[int]] = {}
        for pair in kept:
            by_value.setdefault(pair.ref_ids[0] % _UINT8_RANGE, []).extend(pair.pred_ids)
        # Value 0 is background in the official mask: those pairs are not scored.
        return [(tuple(sorted(by_value[v])), self._ref_group(v)) for v in sorted(by_value) if v]

    def _ref_group(self, group_id: int) -> tuple[int, ...]:
        """Reference components labelled ``group_id`` after the merge (official ``m == g_id``)."""
        for group in self.ref_groups:
            if group_id in group:
                return group if group[0] == group_id else ()
        return (group_id,) if 1 <= group_id <= self.n_ref else ()


def _codalab_trim(
    matching: LesionMatching, min_overlap: float
) -> tuple[list[LesionPair], list[LesionPair]]:
    """The official trimming loop: (pairs left in ``detected_mask``, pairs judged undetected).

    Pairs are examined in order of their lowest predicted id. ``d`` holds every pair's
    predicted voxels as ``ref_ids[0] % 256``; an undetected pair clears every voxel of ``d``
    equal to its reference id (nothing when that id is above 255).
    """
    alive = list(matching.pairs)
    missed = []
    for pair in matching.pairs:
        in_union = [k for k in alive if k.ref_ids[0] % _UINT8_RANGE == pair.pred_ids[0]]
        shared = sum(
            matching.overlaps.get((p, pair.ref_ids[0]), 0) for k in in_union for p in k.pred_ids
        )
        union = sum(k.n_pred for k in in_union) + pair.n_ref - shared
        if pair.intersection / union <= min_overlap:
            missed.append(pair)
            alive = [k for k in alive if k.ref_ids[0] % _UINT8_RANGE != pair.ref_ids[0]]
    return alive, missed


def _sparse_overlaps(
    pred_labels: np.ndarray, ref_labels: np.ndarray, n_ref: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p, g, voxels) for every touching pair of components, sorted by p then g."""
    both = (pred_labels > 0) & (ref_labels > 0)
    pv = pred_labels[both].astype(np.int64)
    rv = ref_labels[both].astype(np.int64)
    keys, counts = np.unique(pv * (n_ref + 1) + rv, return_counts=True)
    p_of, g_of = np.divmod(keys, n_ref + 1)
    return p_of, g_of, counts.astype(np.int64)


def _first_per_key(key: np.ndarray, *order: np.ndarray) -> np.ndarray:
    """Index of the first row of each ``key`` value after sorting by ``(key, *order)``."""
    idx = np.lexsort(tuple(reversed((key,) + order)))
    first = np.ones(idx.size, dtype=bool)
    first[1:] = key[idx[1:]] != key[idx[:-1]]
    return idx[first]


def _reference_groups(
    p_of: np.ndarray, g_of: np.ndarray, counts: np.ndarray, n_ref: int
) -> np.ndarray:
    """Group id (lowest member id) of every reference component 0..n_ref (steps 3 of the doc)."""
    rows = _first_per_key(g_of, -counts, p_of)  # owner: largest overlap, lowest p on ties
    owner_of_g = dict(zip(g_of[rows].tolist(), p_of[rows].tolist(), strict=True))
    group_id = np.arange(n_ref + 1, dtype=np.int64)
    lowest: dict[int, int] = {}
    for g, p in sorted(owner_of_g.items()):
        group_id[g] = lowest.setdefault(p, g)
    return group_id


def match_lesions(
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    n_pred: int | None = None,
    n_ref: int | None = None,
) -> LesionMatching:
    """Merge and match predicted and reference lesions (LiTS matching, module docstring).

    Args:
        pred_labels: (Z, Y, X) int component ids of the prediction (0 = background), e.g. from
            :func:`label_lesions`.
        ref_labels: (Z, Y, X) int component ids of the reference, same shape.
        n_pred: number of predicted components (default: the largest id).
        n_ref: number of reference components (default: the largest id).

    Returns:
        The matching; :meth:`LesionMatching.counts` gives TP/FP/FN at any IoU threshold under
        either rule.
    """
    pred_labels = np.asarray(pred_labels)
    ref_labels = np.asarray(ref_labels)
    if pred_labels.shape != ref_labels.shape:
        raise ValueError(f"label shapes differ: {pred_labels.shape} vs {ref_labels.shape}")
    n_pred = int(pred_labels.max(initial=0)) if n_pred is None else int(n_pred)
    n_ref = int(ref_labels.max(initial=0)) if n_ref is None else int(n_ref)
    if n_pred == 0 or n_ref == 0:
        return LesionMatching(n_pred=n_pred, n_ref=n_ref)
    p_of, g_of, counts = _sparse_overlaps(pred_labels, ref_labels, n_ref)
    if p_of.size == 0:
        return LesionMatching(n_pred=n_pred, n_ref=n_ref)
    group_of = _reference_groups(p_of, g_of, counts, n_ref)
    # Overlap of each predicted component with each reference group.
    keys, inverse = np.unique(p_of * (n_ref + 1) + group_of[g_of], return_inverse=True)
    group_counts = np.bincount(inverse.ravel(), weights=counts).astype(np.int64)
    gp_of, gg_of = np.divmod(keys, n_ref + 1)
    best = _first_per_key(gp_of, -group_counts, gg_of)  # each p's group: largest, lowest id
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    ref_sizes = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)
    pairs = _pairs(gp_of[best], gg_of[best], group_counts[best], group_of, pred_sizes, ref_sizes)
    multi = [g for g in _members(group_of).values() if len(g) > 1]
    overlaps = dict(
        zip(zip(gp_of.tolist(), gg_of.tolist(), strict=True), group_counts.tolist(), strict=True)
    )
    return LesionMatching(
        n_pred=n_pred,
        n_ref=n_ref,
        pairs=tuple(pairs),
        ref_groups=tuple(sorted(multi)),
        overlaps=overlaps,
    )


def _members(group_of: np.ndarray) -> dict[int, tuple[int, ...]]:
    """Reference group id -> its component ids (ascending), for components 1..n_ref."""
    out: dict[int, list[int]] = {}
    for g, gid in enumerate(group_of.tolist()[1:], start=1):
        out.setdefault(gid, []).append(g)
    return {k: tuple(v) for k, v in out.items()}


def _pairs(
    p_ids: np.ndarray,
    group_ids: np.ndarray,
    inter: np.ndarray,
    group_of: np.ndarray,
    pred_sizes: np.ndarray,
    ref_sizes: np.ndarray,
) -> list[LesionPair]:
    """Step 5: predicted components matched to one reference group form one pair."""
    members = _members(group_of)
    by_group: dict[int, list[tuple[int, int]]] = {}
    for p, gid, i in zip(p_ids.tolist(), group_ids.tolist(), inter.tolist(), strict=True):
        by_group.setdefault(gid, []).append((p, i))
    pairs = []
    for gid, rows in by_group.items():
        pred = tuple(sorted(p for p, _ in rows))
        ref = members[gid]
        pairs.append(
            LesionPair(
                pred_ids=pred,
                ref_ids=ref,
                intersection=sum(i for _, i in rows),
                n_pred=int(pred_sizes[list(pred)].sum()),
                n_ref=int(ref_sizes[list(ref)].sum()),
            )
        )
    pairs.sort(key=lambda p: p.pred_ids[0])
    return pairs
