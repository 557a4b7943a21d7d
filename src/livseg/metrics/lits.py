"""The LiTS metric set: per-case scores, lesion detection, tumour burden, data-set summary.

Follows the LiTS scorer (github.com/PatrickChrist/lits-challenge-scoring, ``program/evaluate.py``
+ ``program/helpers/calc_metric.py`` + ``helpers/surface.py``) with the definitions of SPEC
section 4, and lesion detection as its author fixed it (:mod:`livseg.metrics.lesions`, rule
``"intended"``). Version of these definitions: :data:`DEFINITIONS_VERSION`.
``lesion_rule="codalab"`` reproduces instead what the official code (b9d13be) outputs, bugs
included (end of this docstring).

Per case (labels 0 background, 1 liver, 2 tumour; spacing in mm from the reference header):

* liver = ``label >= 1``, tumour = ``label == 2``; for each: Dice, Jaccard, VOE, RVD
  (:mod:`livseg.metrics.overlap`), ASSD, RMSD, MSD (:mod:`livseg.metrics.surface`);
* lesions = 6-connected components of the tumour, numbered in the voxel order of a NIfTI file
  (the (x, y, z) view of livseg's (z, y, x) arrays, as the official scorer reads files with
  nibabel); merge, match and count as :mod:`livseg.metrics.lesions`, at IoU > 0.5 and IoU > 0
  ("greater zero");
* the segmentation scores of every **detected** lesion (IoU > 0.5) between the merged predicted
  group and the merged reference group, as the official scorer;
* tumour burden = tumour voxels / liver voxels, for prediction and reference.

Empty-mask rules (``penalty`` defaults to :data:`DEFAULT_PENALTY` = 9001, the official ``LARGE``):

* one side empty (liver, tumour or lesion pair): Dice 0, Jaccard 0, VOE 1, and RVD, ASSD, RMSD,
  MSD = ``penalty`` (official ``segmentation_metrics`` defaults);
* liver empty on both sides: same as one side empty (official: no predicted liver -> defaults);
* tumour empty on both sides: Dice 1, Jaccard 1, VOE 0, RVD 0 (official: tumour Dice 1), and
  ASSD, RMSD, MSD = NaN (no surface on either side: undefined, and used in no summary value);
* tumour burden: a side with no liver voxel has no burden; the case's burden error is 0 when both
  sides have no liver, else ``penalty`` when one side has none (official: ``LARGE`` for a
  prediction without liver).

Data-set summary (:func:`summarize`; keys in :data:`SUMMARY_KEYS`):

* ``liver_dice_per_case`` / ``tumor_dice_per_case``: mean of the per-case Dice;
* ``liver_dice_global`` / ``tumor_dice_global``: ``2 sum|P&R| / sum(|P|+|R|)`` over all voxels of
  all cases; with no voxel at all: 0 for liver, 1 for tumour (the per-case both-empty rules);
* ``liver_jaccard``, ``liver_voe``, ``liver_rvd``, ``liver_assd``, ``liver_rmsd``, ``liver_msd``:
  means over cases (penalties included);
* ``lesion_precision``, ``lesion_recall`` (IoU > 0.5) and ``lesion_precision_greater_zero``,
  ``lesion_recall_greater_zero`` (any overlap): from TP/FP/FN pooled over all cases; 0 when the
  denominator is 0 (official);
* ``lesion_dice``, ``lesion_jaccard``, ``lesion_voe``, ``lesion_rvd``, ``lesion_assd``,
  ``lesion_rmsd``, ``lesion_msd``: means over all detected lesions of the data set; with no
  detected lesion: 0, 0, 1, penalty, penalty, penalty, penalty (official defaults);
* ``tumor_burden_rmse``: ``sqrt(mean(err^2))``; ``tumor_burden_max_abs_error``: ``max |err|``,
  ``err = burden_pred - burden_ref`` per case;
* ``tumor_assd``: mean whole-tumour ASSD over the cases where it is defined (livseg's own).

Confidence intervals (:meth:`EvaluationResult.intervals`, :mod:`livseg.metrics.bootstrap`): a 95 %
percentile bootstrap interval over cases, seeded, of the means in :data:`INTERVAL_KEYS`.

Deliberate differences from the official code (each a fix of the code towards its own stated
rule or towards the LiTS paper): RVD is ``(|P|-|R|)/|R|`` (the official code calls MedPy
``ravd(ref, pred)``); a prediction "has a liver" when it has any voxel ``>= 1`` (official: any
voxel ``== 1``); the tumour burden error is reported as max **absolute** error (official: the
signed maximum); liver Dice global counts the prediction's voxels whenever they exist.

``lesion_rule="codalab"``: the per-case lesion counts and lesion scores follow the official code
(:mod:`livseg.metrics.lesions`: TP can be negative), and :func:`summarize` returns what the
official ``evaluate.py`` (b9d13be) writes to ``scores.txt`` under the matching keys, including the
differences above: RVD ``(|R|-|P|)/|P|`` (liver and lesions); a prediction without a voxel ``== 1``
has no liver (liver scores = the defaults, liver Dice 0, its voxels left out of the liver Dice
global, burden = ``penalty``); ``tumor_dice_global`` is 0 when no case has a tumour voxel;
lesion means are over the official per-lesion list, or the defaults when no case has
``num_detected > 0``; ``err = burden_ref - burden_pred`` and ``tumor_burden_max_abs_error``
holds the official **signed** maximum of it. The official code crashes on a reference without
liver (division by zero); livseg gives that case a NaN burden error and logs a warning. The
per-case rows keep livseg's liver and tumour definitions; only the summary changes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from livseg.metrics.bootstrap import CONFIDENCE, N_RESAMPLES, SEED, Interval, mean_interval
from livseg.metrics.lesions import (
    DETECTION_IOU,
    DetectionCounts,
    LesionMatching,
    check_rule,
    label_lesions,
    match_lesions,
)
from livseg.metrics.overlap import OverlapCounts
from livseg.metrics.surface import surface_distances
from livseg.preprocess.bbox import bounding_box

log = logging.getLogger("livseg.metrics.lits")

#: The official scorer's ``LARGE``: value of distance/volume metrics when a mask is empty.
DEFAULT_PENALTY = 9001.0
#: Version of the metric definitions written with every result.
DEFINITIONS_VERSION = (
    "livseg-lits-metrics-2.0 (LiTS scorer rules, SPEC section 4; lesion detection as fixed by "
    "its author, veugene/lits-challenge-scoring 0ceebcf, merged lesions counted individually)"
)

SEGMENTATION_METRICS = ("dice", "jaccard", "voe", "rvd", "assd", "rmsd", "msd")

SUMMARY_KEYS = (
    "liver_dice_per_case",
    "liver_dice_global",
    "liver_jaccard",
    "liver_voe",
    "liver_rvd",
    "liver_assd",
    "liver_rmsd",
    "liver_msd",
    "tumor_dice_per_case",
    "tumor_dice_global",
    "tumor_assd",
    "lesion_precision",
    "lesion_recall",
    "lesion_precision_greater_zero",
    "lesion_recall_greater_zero",
    "lesion_dice",
    "lesion_jaccard",
    "lesion_voe",
    "lesion_rvd",
    "lesion_assd",
    "lesion_rmsd",
    "lesion_msd",
    "tumor_burden_rmse",
    "tumor_burden_max_abs_error",
)

#: Summary means that get a bootstrap confidence interval (one value per case).
INTERVAL_KEYS = ("liver_dice_per_case", "tumor_dice_per_case", "liver_assd", "tumor_assd")


@dataclass(frozen=True)
class SegmentationScores:
    """Segmentation scores of one structure (liver, tumour or a lesion pair) in one case.

    Attributes:
        dice, jaccard, voe: overlap scores in [0, 1].
        rvd: signed relative volume difference ``(|P|-|R|)/|R|``.
        assd, rmsd, msd: surface distances in mm (pooled mean, RMS, maximum).
        intersection, n_pred, n_ref: voxel counts |P&R|, |P|, |R|.
    """

    dice: float
    jaccard: float
    voe: float
    rvd: float
    assd: float
    rmsd: float
    msd: float
    intersection: int = 0
    n_pred: int = 0
    n_ref: int = 0


def _penalised(counts: OverlapCounts, penalty: float) -> SegmentationScores:
    """The one-side-empty scores (official ``segmentation_metrics`` defaults)."""
    p = float(penalty)
    return SegmentationScores(
        0.0, 0.0, 1.0, p, p, p, p, counts.intersection, counts.n_pred, counts.n_ref
    )


def segmentation_scores(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    *,
    penalty: float = DEFAULT_PENALTY,
    both_empty_is_perfect: bool = False,
) -> SegmentationScores:
    """Dice, Jaccard, VOE, RVD, ASSD, RMSD, MSD of one mask pair.

    Args:
        pred: (Z, Y, X) predicted mask (nonzero = object).
        ref: (Z, Y, X) reference mask, same shape.
        spacing: (sz, sy, sx) in mm.
        penalty: value of RVD, ASSD, RMSD, MSD when one mask is empty (module docstring).
        both_empty_is_perfect: when both masks are empty, True gives Dice 1, Jaccard 1, VOE 0,
            RVD 0 and NaN distances (tumour rule); False gives the one-empty penalties (liver).

    Returns:
        The scores with the voxel counts.
    """
    counts = OverlapCounts.of(pred, ref)
    if counts.n_pred and counts.n_ref:
        sd = surface_distances(pred, ref, spacing)
        return SegmentationScores(
            dice=counts.dice(),
            jaccard=counts.jaccard(),
            voe=counts.voe(),
            rvd=counts.rvd(),
            assd=sd.assd,
            rmsd=sd.rmsd,
            msd=sd.msd,
            intersection=counts.intersection,
            n_pred=counts.n_pred,
            n_ref=counts.n_ref,
        )
    if counts.n_pred == 0 and counts.n_ref == 0 and both_empty_is_perfect:
        nan = float("nan")
        return SegmentationScores(1.0, 1.0, 0.0, 0.0, nan, nan, nan, 0, 0, 0)
    return _penalised(counts, penalty)


def _official_rvd(scores: SegmentationScores) -> SegmentationScores:
    """The official scorer's RVD, MedPy ``ravd(ref, pred) = (|R|-|P|)/|P|`` (both non-empty)."""
    if not (scores.n_pred and scores.n_ref):
        return scores
    return replace(scores, rvd=(scores.n_ref - scores.n_pred) / scores.n_pred)


@dataclass(frozen=True)
class CaseResult:
    """All LiTS quantities of one case (arrays are not kept).

    Attributes:
        case_id: the case's name.
        spacing: (sz, sy, sx) mm used for distances.
        liver: scores of ``label >= 1``.
        tumor: scores of ``label == 2`` (whole tumour mask).
        lesion_matching: component counts, merges and matched pairs.
        detection: TP/FP/FN at IoU > 0.5 (under ``lesion_rule``).
        detection_greater_zero: TP/FP/FN at IoU > 0 (under ``lesion_rule``).
        lesion_scores: scores of every detected lesion pair (IoU > 0.5; under ``"codalab"`` the
            official list, :meth:`LesionMatching.scored_groups`).
        tumor_burden_pred, tumor_burden_ref: tumour / liver voxels (NaN when no liver).
        tumor_burden_error: ``burden_pred - burden_ref`` (empty rules in the module docstring).
        lesion_rule: the lesion rule used (:data:`livseg.metrics.lesions.LESION_RULES`).
        pred_has_liver_label: the prediction has a voxel ``== 1`` (the official liver test).
    """

    case_id: str
    spacing: tuple[float, float, float]
    liver: SegmentationScores
    tumor: SegmentationScores
    lesion_matching: LesionMatching
    detection: DetectionCounts
    detection_greater_zero: DetectionCounts
    lesion_scores: tuple[SegmentationScores, ...]
    tumor_burden_pred: float
    tumor_burden_ref: float
    tumor_burden_error: float
    lesion_rule: str = "intended"
    pred_has_liver_label: bool = True

    def row(self) -> dict[str, object]:
        """A flat dict for the per-case CSV (column meanings: :data:`CASE_COLUMNS`)."""
        row: dict[str, object] = {
            "case": self.case_id,
            "spacing_z": self.spacing[0],
            "spacing_y": self.spacing[1],
            "spacing_x": self.spacing[2],
        }
        for prefix, scores in (("liver", self.liver), ("tumor", self.tumor)):
            for key in SEGMENTATION_METRICS:
                row[f"{prefix}_{key}"] = getattr(scores, key)
            row[f"{prefix}_voxels_intersection"] = scores.intersection
            row[f"{prefix}_voxels_pred"] = scores.n_pred
            row[f"{prefix}_voxels_ref"] = scores.n_ref
        m = self.lesion_matching
        row.update(
            {
                "lesions_pred": m.n_pred,
                "lesions_ref": m.n_ref,
                "lesions_pred_merged": m.n_pred_merged,
                "lesions_ref_merged": m.n_ref_merged,
                "lesion_tp": self.detection.tp,
                "lesion_fp": self.detection.fp,
                "lesion_fn": self.detection.fn,
                "lesion_tp_greater_zero": self.detection_greater_zero.tp,
                "lesion_fp_greater_zero": self.detection_greater_zero.fp,
                "lesion_fn_greater_zero": self.detection_greater_zero.fn,
                "tumor_burden_pred": self.tumor_burden_pred,
                "tumor_burden_ref": self.tumor_burden_ref,
                "tumor_burden_error": self.tumor_burden_error,
            }
        )
        return row


#: Per-case CSV columns: ``case``; ``spacing_{z,y,x}`` (mm); for ``liver`` and ``tumor``:
#: ``_dice``, ``_jaccard``, ``_voe``, ``_rvd``, ``_assd``, ``_rmsd``, ``_msd`` (mm) and
#: ``_voxels_intersection``, ``_voxels_pred``, ``_voxels_ref``; lesion counts ``lesions_pred``,
#: ``lesions_ref``, ``lesions_pred_merged``, ``lesions_ref_merged``, ``lesion_{tp,fp,fn}`` (IoU >
#: 0.5) and ``lesion_{tp,fp,fn}_greater_zero``; ``tumor_burden_{pred,ref,error}``.
CASE_COLUMNS = tuple(
    ["case", "spacing_z", "spacing_y", "spacing_x"]
    + [
        f"{s}_{k}"
        for s in ("liver", "tumor")
        for k in SEGMENTATION_METRICS + ("voxels_intersection", "voxels_pred", "voxels_ref")
    ]
    + [
        "lesions_pred",
        "lesions_ref",
        "lesions_pred_merged",
        "lesions_ref_merged",
        "lesion_tp",
        "lesion_fp",
        "lesion_fn",
        "lesion_tp_greater_zero",
        "lesion_fp_greater_zero",
        "lesion_fn_greater_zero",
        "tumor_burden_pred",
        "tumor_burden_ref",
        "tumor_burden_error",
    ]
)


def _burden(tumour_voxels: int, liver_voxels: int) -> float:
    return tumour_voxels / liver_voxels if liver_voxels else float("nan")


def _group_box(boxes: list, ids: Iterable[int]) -> list[tuple[slice, ...]]:
    return [boxes[i - 1] for i in ids]


def _lesion_scores(
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    groups: list[tuple[tuple[int, ...], ...]],
    spacing: Sequence[float],
    penalty: float,
) -> list[SegmentationScores]:
    """Scores of each (predicted ids, reference ids) group pair, each in its own box."""
    pred_boxes = ndimage.find_objects(pred_labels)
    ref_boxes = ndimage.find_objects(ref_labels)
    out = []
    for pred_ids, ref_ids in groups:
        boxes = _group_box(pred_boxes, pred_ids) + _group_box(ref_boxes, ref_ids)
        box = tuple(
            slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3)
        )
        p = np.isin(pred_labels[box], pred_ids)
        r = np.isin(ref_labels[box], ref_ids) if ref_ids else np.zeros_like(p)
        out.append(segmentation_scores(p, r, spacing, penalty=penalty))
    return out


@dataclass(frozen=True)
class _Lesions:
    matching: LesionMatching
    detection: DetectionCounts
    detection_greater_zero: DetectionCounts
    scores: tuple[SegmentationScores, ...]


def _lesions(
    tum_p: np.ndarray,
    tum_r: np.ndarray,
    tumor: SegmentationScores,
    spacing: tuple[float, float, float],
    penalty: float,
    rule: str,
) -> _Lesions:
    """Lesion matching, counts at both thresholds and per-lesion scores of one case.

    Components are labelled on the (x, y, z) view of the (z, y, x) masks, so that their ids
    follow the voxel order of a NIfTI file (module docstring); spacing is reversed to match.
    """
    tbox = bounding_box(tum_p | tum_r)
    if tbox is None:
        none = DetectionCounts()
        return _Lesions(LesionMatching(n_pred=0, n_ref=0), none, none, ())
    pred_labels, n_pred = label_lesions(tum_p[tbox].T)
    ref_labels, n_ref = label_lesions(tum_r[tbox].T)
    matching = match_lesions(pred_labels, ref_labels, n_pred, n_ref)
    groups = matching.scored_groups(rule)
    if [tuple(map(len, g)) for g in groups] == [(n_pred, n_ref)]:
        scores = [tumor]  # one group holding every lesion: the whole-tumour pair, scored already
    else:
        scores = _lesion_scores(pred_labels, ref_labels, groups, spacing[::-1], penalty)
    if rule == "codalab":
        scores = [_official_rvd(s) for s in scores]
    return _Lesions(
        matching=matching,
        detection=matching.counts(DETECTION_IOU, rule),
        detection_greater_zero=matching.counts(0.0, rule),
        scores=tuple(scores),
    )


def _check_case(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], case_id: str
) -> tuple[float, float, float]:
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(
            f"case {case_id!r}: prediction shape {pred.shape} != reference shape "
            f"{ref.shape} (both must be 3-D and equal)"
        )
    spacing_t = tuple(float(s) for s in spacing)
    if len(spacing_t) != 3 or not all(s > 0 and math.isfinite(s) for s in spacing_t):
        raise ValueError(f"case {case_id!r}: spacing must be three positive numbers, got {spacing}")
    return spacing_t  # type: ignore[return-value]


def _burden_error(liver: SegmentationScores, tumor: SegmentationScores, penalty: float) -> float:
    if liver.n_pred and liver.n_ref:
        return _burden(tumor.n_pred, liver.n_pred) - _burden(tumor.n_ref, liver.n_ref)
    return 0.0 if not liver.n_pred and not liver.n_ref else float(penalty)


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    *,
    penalty: float = DEFAULT_PENALTY,
    case_id: str = "",
    lesion_rule: str = "intended",
) -> CaseResult:
    """The LiTS metric set of one case.

    Args:
        pred: (Z, Y, X) predicted labels (0 background, 1 liver, 2 tumour).
        ref: (Z, Y, X) reference labels, same shape.
        spacing: (sz, sy, sx) voxel size in mm (from the reference header).
        penalty: value for undefined distance/volume metrics (module docstring);
            default 9001 as the official scorer.
        case_id: name written in results.
        lesion_rule: ``"intended"`` (default) or ``"codalab"``
            (:mod:`livseg.metrics.lesions`).

    Returns:
        The case's scores; empty masks follow the rules of the module docstring.

    Raises:
        ValueError: shapes differ, arrays not 3-D, spacing invalid or unknown lesion rule.
    """
    check_rule(lesion_rule)
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    spacing_t = _check_case(pred, ref, spacing, case_id)

    # Everything below is unchanged by cropping to the joint foreground box (distances pad it).
    box = bounding_box(
        np.bitwise_or(pred, ref, dtype=pred.dtype)
        if pred.dtype == ref.dtype
        else (pred > 0) | (ref > 0)
    )
    if box is None:
        box = tuple(slice(0, 0) for _ in range(3))
    p = pred[box]
    r = ref[box]
    liver = segmentation_scores(p >= 1, r >= 1, spacing_t, penalty=penalty)
    tum_p, tum_r = p == 2, r == 2
    tumor = segmentation_scores(
        tum_p, tum_r, spacing_t, penalty=penalty, both_empty_is_perfect=True
    )
    lesions = _lesions(tum_p, tum_r, tumor, spacing_t, penalty, lesion_rule)
    result = CaseResult(
        case_id=case_id,
        spacing=spacing_t,
        liver=liver,
        tumor=tumor,
        lesion_matching=lesions.matching,
        detection=lesions.detection,
        detection_greater_zero=lesions.detection_greater_zero,
        lesion_scores=lesions.scores,
        tumor_burden_pred=_burden(tumor.n_pred, liver.n_pred),
        tumor_burden_ref=_burden(tumor.n_ref, liver.n_ref),
        tumor_burden_error=_burden_error(liver, tumor, penalty),
        lesion_rule=lesion_rule,
        pred_has_liver_label=bool(np.any(p == 1)),
    )
    log.debug(
        "case %s: liver dice %.4f, tumour dice %.4f, lesions TP %d FP %d FN %d",
        case_id,
        liver.dice,
        tumor.dice,
        result.detection.tp,
        result.detection.fp,
        result.detection.fn,
    )
    return result


def _global_dice(scores: Iterable[SegmentationScores], empty: float) -> float:
    inter = total = 0
    for s in scores:
        inter += s.intersection
        total += s.n_pred + s.n_ref
    return 2.0 * inter / total if total else empty


def _mean(values: Iterable[float]) -> float:
    return float(np.mean(list(values)))


def _liver_of(case: CaseResult, penalty: float) -> SegmentationScores:
    """The case's liver scores as the summary of its lesion rule sees them."""
    if case.lesion_rule != "codalab":
        return case.liver
    if not case.pred_has_liver_label:
        return _penalised(OverlapCounts(0, 0, case.liver.n_ref), penalty)
    return _official_rvd(case.liver)


def case_values(case: CaseResult, penalty: float = DEFAULT_PENALTY) -> dict[str, float]:
    """The per-case values behind the means of :data:`INTERVAL_KEYS` (NaN = undefined)."""
    liver = _liver_of(case, penalty)
    return {
        "liver_dice_per_case": liver.dice,
        "tumor_dice_per_case": case.tumor.dice,
        "liver_assd": liver.assd,
        "tumor_assd": case.tumor.assd,
    }


def _rule_of(cases: Sequence[CaseResult]) -> str:
    rules = {c.lesion_rule for c in cases}
    if len(rules) != 1:
        raise ValueError(f"cases were evaluated with different lesion rules: {sorted(rules)}")
    return rules.pop()


def _lesion_means(cases: Sequence[CaseResult], rule: str, penalty: float) -> dict[str, float]:
    lesions = [s for c in cases for s in c.lesion_scores]
    any_scored = any(c.detection.tp > 0 for c in cases) if rule == "codalab" else bool(lesions)
    defaults = (0.0, 0.0, 1.0) + (float(penalty),) * 4
    out = {}
    for key, default in zip(SEGMENTATION_METRICS, defaults, strict=True):
        if not any_scored:
            out[f"lesion_{key}"] = default
        else:  # the official np.mean of an empty list is NaN
            values = [getattr(s, key) for s in lesions]
            out[f"lesion_{key}"] = _mean(values) if values else float("nan")
    return out


def _burden_errors(cases: Sequence[CaseResult], rule: str, penalty: float) -> np.ndarray:
    if rule != "codalab":
        return np.array([c.tumor_burden_error for c in cases], dtype=np.float64)
    errors = []
    for c in cases:
        if not c.liver.n_ref:
            log.warning("case %s: the reference has no liver; official burden undefined", c.case_id)
            errors.append(math.nan)
            continue
        pred = c.tumor_burden_pred if c.pred_has_liver_label else float(penalty)
        errors.append(c.tumor_burden_ref - pred)
    return np.array(errors, dtype=np.float64)


def summarize(cases: Sequence[CaseResult], penalty: float = DEFAULT_PENALTY) -> dict[str, float]:
    """Data-set summary of case results (keys and definitions: module docstring).

    The cases' lesion rule (all the same) selects livseg's or the official summary formulas.

    Args:
        cases: per-case results (at least one).
        penalty: value of lesion RVD/ASSD/RMSD/MSD when no lesion is detected in the data set.

    Returns:
        Dict with every key of :data:`SUMMARY_KEYS` (floats) plus ``n_cases`` and the pooled
        lesion counts ``lesion_tp``, ``lesion_fp``, ``lesion_fn`` (and ``_greater_zero``).

    Raises:
        ValueError: ``cases`` is empty or mixes lesion rules.
    """
    if not cases:
        raise ValueError("cannot summarise an empty list of cases")
    rule = _rule_of(cases)
    livers = [_liver_of(c, penalty) for c in cases]
    out: dict[str, float] = {"liver_dice_per_case": _mean(s.dice for s in livers)}
    out["liver_dice_global"] = _global_dice(livers, empty=0.0)
    for key in ("jaccard", "voe", "rvd", "assd", "rmsd", "msd"):
        out[f"liver_{key}"] = _mean(getattr(s, key) for s in livers)
    out["tumor_dice_per_case"] = _mean(c.tumor.dice for c in cases)
    out["tumor_dice_global"] = _global_dice(
        (c.tumor for c in cases), empty=float(rule != "codalab")
    )
    tumour_assd = [c.tumor.assd for c in cases if not math.isnan(c.tumor.assd)]
    out["tumor_assd"] = _mean(tumour_assd) if tumour_assd else float("nan")

    out.update(_detection_summary(cases))
    out.update(_lesion_means(cases, rule, penalty))

    err = _burden_errors(cases, rule, penalty)
    out["tumor_burden_rmse"] = float(np.sqrt(np.mean(err**2)))
    out["tumor_burden_max_abs_error"] = float(np.max(err if rule == "codalab" else np.abs(err)))
    out["n_cases"] = len(cases)
    out["lesions_detected"] = sum(len(c.lesion_scores) for c in cases)
    return out


def _detection_summary(cases: Sequence[CaseResult]) -> dict[str, float]:
    """Precision and recall from TP/FP/FN pooled over the cases, and the pooled counts."""
    det = sum((c.detection for c in cases), DetectionCounts())
    det0 = sum((c.detection_greater_zero for c in cases), DetectionCounts())
    return {
        "lesion_precision": det.precision,
        "lesion_recall": det.recall,
        "lesion_precision_greater_zero": det0.precision,
        "lesion_recall_greater_zero": det0.recall,
        "lesion_tp": det.tp,
        "lesion_fp": det.fp,
        "lesion_fn": det.fn,
        "lesion_tp_greater_zero": det0.tp,
        "lesion_fp_greater_zero": det0.fp,
        "lesion_fn_greater_zero": det0.fn,
    }


@dataclass(frozen=True)
class EvaluationResult:
    """Per-case results and the data-set summary.

    Attributes:
        cases: one :class:`CaseResult` per case, in input order.
        summary: :func:`summarize` of ``cases``.
        penalty: the penalty value used.
        definitions_version: :data:`DEFINITIONS_VERSION`.
        pairs: ``(prediction file, reference file)`` per case when read from folders, else ().
        lesion_rule: the lesion rule of every case.
    """

    cases: tuple[CaseResult, ...]
    summary: dict[str, float]
    penalty: float = DEFAULT_PENALTY
    definitions_version: str = DEFINITIONS_VERSION
    pairs: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    lesion_rule: str = "intended"

    def rows(self) -> list[dict[str, object]]:
        """Per-case rows (columns :data:`CASE_COLUMNS`)."""
        return [c.row() for c in self.cases]

    def values(self, key: str) -> np.ndarray:
        """(n_cases,) per-case values of one of :data:`INTERVAL_KEYS` (NaN = undefined)."""
        if key not in INTERVAL_KEYS:
            raise ValueError(f"no per-case values for {key!r}; one of {', '.join(INTERVAL_KEYS)}")
        return np.array([case_values(c, self.penalty)[key] for c in self.cases], dtype=float)

    def intervals(
        self,
        confidence: float = CONFIDENCE,
        n_resamples: int = N_RESAMPLES,
        seed: int = SEED,
    ) -> dict[str, Interval]:
        """Bootstrap confidence interval of each mean of :data:`INTERVAL_KEYS`, by case.

        Method: :mod:`livseg.metrics.bootstrap` (percentile, seeded; NaN cases left out).
        """
        return {
            key: mean_interval(
                self.values(key), confidence=confidence, n_resamples=n_resamples, seed=seed
            )
            for key in INTERVAL_KEYS
        }


def evaluate_cases(
    cases: Iterable[tuple[np.ndarray, np.ndarray, Sequence[float]]],
    *,
    penalty: float = DEFAULT_PENALTY,
    case_ids: Sequence[str] | None = None,
    lesion_rule: str = "intended",
) -> EvaluationResult:
    """Evaluate several in-memory cases and summarise them.

    Args:
        cases: ``(pred, ref, spacing)`` triples: (Z, Y, X) label arrays and (sz, sy, sx) mm.
        penalty: see :func:`evaluate_case`.
        case_ids: names of the cases (default "0", "1", ...).
        lesion_rule: see :func:`evaluate_case`.

    Returns:
        The per-case results and the summary.
    """
    results = []
    for k, (pred, ref, spacing) in enumerate(cases):
        cid = case_ids[k] if case_ids is not None else str(k)
        results.append(
            evaluate_case(pred, ref, spacing, penalty=penalty, case_id=cid, lesion_rule=lesion_rule)
        )
    return EvaluationResult(
        cases=tuple(results),
        summary=summarize(results, penalty),
        penalty=float(penalty),
        lesion_rule=lesion_rule,
    )
