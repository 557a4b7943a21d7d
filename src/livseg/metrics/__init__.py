"""The LiTS metric set, in mm, with explicit empty-mask rules.

Modules: :mod:`~livseg.metrics.overlap` (Dice, Jaccard, VOE, RVD),
:mod:`~livseg.metrics.surface` (boundary distances: ASSD, RMSD, MSD),
:mod:`~livseg.metrics.lesions` (6-connected lesions, official LiTS merge and detection),
:mod:`~livseg.metrics.lits` (per case and data-set summary, empty-mask rules, definitions version),
:mod:`~livseg.metrics.evaluate` (folders: pairing, checks, CSV + JSON output).
"""

from livseg.metrics.evaluate import (
    CasePair,
    evaluate_folders,
    format_table,
    pair_files,
    write_results,
)
from livseg.metrics.lesions import (
    DetectionCounts,
    LesionMatching,
    LesionPair,
    label_lesions,
    match_lesions,
)
from livseg.metrics.lits import (
    DEFAULT_PENALTY,
    DEFINITIONS_VERSION,
    SUMMARY_KEYS,
    CaseResult,
    EvaluationResult,
    SegmentationScores,
    evaluate_case,
    evaluate_cases,
    segmentation_scores,
    summarize,
)
from livseg.metrics.overlap import OverlapCounts, dice, jaccard, rvd, voe
from livseg.metrics.surface import (
    EmptyMaskError,
    SurfaceDistances,
    boundary,
    surface_distances,
)

__all__ = [
    "DEFAULT_PENALTY",
    "DEFINITIONS_VERSION",
    "SUMMARY_KEYS",
    "CaseResult",
    "CasePair",
    "DetectionCounts",
    "EmptyMaskError",
    "EvaluationResult",
    "LesionMatching",
    "LesionPair",
    "OverlapCounts",
    "SegmentationScores",
    "SurfaceDistances",
    "boundary",
    "dice",
    "evaluate_case",
    "evaluate_cases",
    "evaluate_folders",
    "format_table",
    "jaccard",
    "label_lesions",
    "match_lesions",
    "pair_files",
    "rvd",
    "segmentation_scores",
    "summarize",
    "surface_distances",
    "voe",
    "write_results",
]
