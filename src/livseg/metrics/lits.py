"""The LiTS metric set: per-case scores, lesion detection, tumour burden, data-set summary.

Reproduces the official LiTS scorer (github.com/PatrickChrist/lits-challenge-scoring,
``program/evaluate.py`` + ``program/helpers/calc_metric.py`` + ``helpers/surface.py``) with the
definitions of SPEC section 4. Version of these definitions: :data:`DEFINITIONS_VERSION`.

Per case (labels 0 background, 1 liver, 2 tumour; spacing in mm from the reference header):

* liver = ``label >= 1``, tumour = ``label == 2``; for each: Dice, Jaccard, VOE, RVD
  (:mod:`livseg.metrics.overlap`), ASSD, RMSD, MSD (:mod:`livseg.metrics.surface`);
* lesions = 6-connected components of the tumour; merge/match/detect as the official
  ``detect_lesions`` (:mod:`livseg.metrics.lesions`), at IoU > 0.5 and IoU > 0 ("greater zero");
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
  ``err = burden_pred - burden_ref`` per case.

Deliberate differences from the official code (each a fix of the code towards its own stated
rule or towards the LiTS paper): RVD is ``(|P|-|R|)/|R|`` (the official code calls MedPy
``ravd(ref, pred)``); a prediction "has a liver" when it has any voxel ``>= 1`` (official: any
voxel ``== 1``); the tumour burden error is reported as max **absolute** error (official: the
signed maximum); liver Dice global counts the prediction's voxels whenever they exist.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from livseg.metrics.lesions import DetectionCounts, LesionMatching, label_lesions, match_lesions
from livseg.metrics.overlap import OverlapCounts
from livseg.metrics.surface import surface_distances
from livseg.preprocess.bbox import bounding_box

log = logging.getLogger("livseg.metrics.lits")

#: The official scorer's ``LARGE``: value of distance/volume metrics when a mask is empty.
DEFAULT_PENALTY = 9001.0
#: Version of the metric definitions written with every result.
DEFINITIONS_VERSION = "livseg-lits-metrics-1.0 (LiTS official scorer rules, SPEC section 4)"
#: IoU threshold of a lesion detection (strictly greater).
DETECTION_IOU = 0.5

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
    return SegmentationScores(
        0.0,
        0.0,
        1.0,
        float(penalty),
        float(penalty),
        float(penalty),
        float(penalty),
        counts.intersection,
        counts.n_pred,
        counts.n_ref,
    )


@dataclass(frozen=True)
class CaseResult:
    """All LiTS quantities of one case (arrays are not kept).

    Attributes:
        case_id: the case's name.
        spacing: (sz, sy, sx) mm used for distances.
        liver: scores of ``label >= 1``.
        tumor: scores of ``label == 2`` (whole tumour mask).
        lesion_matching: component counts, merges and matched pairs.
        detection: TP/FP/FN at IoU > 0.5.
        detection_greater_zero: TP/FP/FN at IoU > 0.
        lesion_scores: scores of every detected lesion pair (IoU > 0.5).
        tumor_burden_pred, tumor_burden_ref: tumour / liver voxels (NaN when no liver).
        tumor_burden_error: ``burden_pred - burden_ref`` (empty rules in the module docstring).
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


def _lesion_pair_scores(
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    matching: LesionMatching,
    spacing: Sequence[float],
    penalty: float,
) -> tuple[SegmentationScores, ...]:
    """Segmentation scores of every detected (IoU > 0.5) lesion pair, each in its own box."""
    detected = matching.detected_pairs(DETECTION_IOU)
    if not detected:
        return ()
    from scipy import ndimage

    pred_boxes = ndimage.find_objects(pred_labels)
    ref_boxes = ndimage.find_objects(ref_labels)
    out = []
    for pair in detected:
        boxes = [pred_boxes[i - 1] for i in pair.pred_ids] + [
            ref_boxes[i - 1] for i in pair.ref_ids
        ]
        box = tuple(
            slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3)
        )
        p = np.isin(pred_labels[box], pair.pred_ids)
        r = np.isin(ref_labels[box], pair.ref_ids)
        out.append(segmentation_scores(p, r, spacing, penalty=penalty))
    return tuple(out)


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    *,
    penalty: float = DEFAULT_PENALTY,
    case_id: str = "",
) -> CaseResult:
    """The LiTS metric set of one case.

    Args:
        pred: (Z, Y, X) predicted labels (0 background, 1 liver, 2 tumour).
        ref: (Z, Y, X) reference labels, same shape.
        spacing: (sz, sy, sx) voxel size in mm (from the reference header).
        penalty: value for undefined distance/volume metrics (module docstring);
            default 9001 as the official scorer.
        case_id: name written in results.

    Returns:
        The case's scores; empty masks follow the rules of the module docstring.

    Raises:
        ValueError: shapes differ, arrays not 3-D or spacing invalid.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(
            f"case {case_id!r}: prediction shape {pred.shape} != reference shape "
            f"{ref.shape} (both must be 3-D and equal)"
        )
    spacing_t = tuple(float(s) for s in spacing)
    if len(spacing_t) != 3 or not all(s > 0 and math.isfinite(s) for s in spacing_t):
        raise ValueError(f"case {case_id!r}: spacing must be three positive numbers, got {spacing}")

    # Everything below is unchanged by cropping to the joint foreground box (distances pad it).
    box = bounding_box((pred > 0) | (ref > 0))
    if box is None:
        box = tuple(slice(0, 0) for _ in range(3))
    p = pred[box]
    r = ref[box]
    liver_p, liver_r = p >= 1, r >= 1
    tum_p, tum_r = p == 2, r == 2

    liver = segmentation_scores(liver_p, liver_r, spacing_t, penalty=penalty)
    tumor = segmentation_scores(
        tum_p, tum_r, spacing_t, penalty=penalty, both_empty_is_perfect=True
    )

    tbox = bounding_box(tum_p | tum_r)
    if tbox is None:
        matching = LesionMatching(n_pred=0, n_ref=0)
        lesion_scores: tuple[SegmentationScores, ...] = ()
    else:
        pred_labels, n_pred = label_lesions(tum_p[tbox])
        ref_labels, n_ref = label_lesions(tum_r[tbox])
        matching = match_lesions(pred_labels, ref_labels, n_pred, n_ref)
        lesion_scores = _lesion_pair_scores(pred_labels, ref_labels, matching, spacing_t, penalty)

    burden_p = _burden(tumor.n_pred, liver.n_pred)
    burden_r = _burden(tumor.n_ref, liver.n_ref)
    if liver.n_pred and liver.n_ref:
        burden_err = burden_p - burden_r
    elif not liver.n_pred and not liver.n_ref:
        burden_err = 0.0
    else:
        burden_err = float(penalty)

    result = CaseResult(
        case_id=case_id,
        spacing=spacing_t,
        liver=liver,
        tumor=tumor,
        lesion_matching=matching,
        detection=matching.counts(DETECTION_IOU),
        detection_greater_zero=matching.counts(0.0),
        lesion_scores=lesion_scores,
        tumor_burden_pred=burden_p,
        tumor_burden_ref=burden_r,
        tumor_burden_error=burden_err,
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


def summarize(cases: Sequence[CaseResult], penalty: float = DEFAULT_PENALTY) -> dict[str, float]:
    """Data-set summary of case results (keys and definitions: module docstring).

    Args:
        cases: per-case results (at least one).
        penalty: value of lesion RVD/ASSD/RMSD/MSD when no lesion is detected in the data set.

    Returns:
        Dict with every key of :data:`SUMMARY_KEYS` (floats) plus ``n_cases`` and the pooled
        lesion counts ``lesion_tp``, ``lesion_fp``, ``lesion_fn`` (and ``_greater_zero``).

    Raises:
        ValueError: ``cases`` is empty.
    """
    if not cases:
        raise ValueError("cannot summarise an empty list of cases")
    out: dict[str, float] = {}
    out["liver_dice_per_case"] = float(np.mean([c.liver.dice for c in cases]))
    out["liver_dice_global"] = _global_dice((c.liver for c in cases), empty=0.0)
    for key in ("jaccard", "voe", "rvd", "assd", "rmsd", "msd"):
        out[f"liver_{key}"] = float(np.mean([getattr(c.liver, key) for c in cases]))
    out["tumor_dice_per_case"] = float(np.mean([c.tumor.dice for c in cases]))
    out["tumor_dice_global"] = _global_dice((c.tumor for c in cases), empty=1.0)

    det = sum((c.detection for c in cases), DetectionCounts())
    det0 = sum((c.detection_greater_zero for c in cases), DetectionCounts())
    out["lesion_precision"] = det.precision
    out["lesion_recall"] = det.recall
    out["lesion_precision_greater_zero"] = det0.precision
    out["lesion_recall_greater_zero"] = det0.recall

    lesions = [s for c in cases for s in c.lesion_scores]
    defaults = {
        "dice": 0.0,
        "jaccard": 0.0,
        "voe": 1.0,
        "rvd": float(penalty),
        "assd": float(penalty),
        "rmsd": float(penalty),
        "msd": float(penalty),
    }
    for key in SEGMENTATION_METRICS:
        out[f"lesion_{key}"] = (
            float(np.mean([getattr(s, key) for s in lesions])) if lesions else defaults[key]
        )

    err = np.array([c.tumor_burden_error for c in cases], dtype=np.float64)
    out["tumor_burden_rmse"] = float(np.sqrt(np.mean(err**2)))
    out["tumor_burden_max_abs_error"] = float(np.max(np.abs(err)))

    out["n_cases"] = len(cases)
    out.update(
        {
            "lesion_tp": det.tp,
            "lesion_fp": det.fp,
            "lesion_fn": det.fn,
            "lesion_tp_greater_zero": det0.tp,
            "lesion_fp_greater_zero": det0.fp,
            "lesion_fn_greater_zero": det0.fn,
            "lesions_detected": len(lesions),
        }
    )
    return out


@dataclass(frozen=True)
class EvaluationResult:
    """Per-case results and the data-set summary.

    Attributes:
        cases: one :class:`CaseResult` per case, in input order.
        summary: :func:`summarize` of ``cases``.
        penalty: the penalty value used.
        definitions_version: :data:`DEFINITIONS_VERSION`.
        pairs: ``(prediction file, reference file)`` per case when read from folders, else ().
    """

    cases: tuple[CaseResult, ...]
    summary: dict[str, float]
    penalty: float = DEFAULT_PENALTY
    definitions_version: str = DEFINITIONS_VERSION
    pairs: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def rows(self) -> list[dict[str, object]]:
        """Per-case rows (columns :data:`CASE_COLUMNS`)."""
        return [c.row() for c in self.cases]


def evaluate_cases(
    cases: Iterable[tuple[np.ndarray, np.ndarray, Sequence[float]]],
    *,
    penalty: float = DEFAULT_PENALTY,
    case_ids: Sequence[str] | None = None,
) -> EvaluationResult:
    """Evaluate several in-memory cases and summarise them.

    Args:
        cases: ``(pred, ref, spacing)`` triples: (Z, Y, X) label arrays and (sz, sy, sx) mm.
        penalty: see :func:`evaluate_case`.
        case_ids: names of the cases (default "0", "1", ...).

    Returns:
        The per-case results and the summary.
    """
    results = []
    for k, (pred, ref, spacing) in enumerate(cases):
        cid = case_ids[k] if case_ids is not None else str(k)
        results.append(evaluate_case(pred, ref, spacing, penalty=penalty, case_id=cid))
    return EvaluationResult(
        cases=tuple(results), summary=summarize(results, penalty), penalty=float(penalty)
    )
