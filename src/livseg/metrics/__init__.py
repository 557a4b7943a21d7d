"""The LiTS metric set, in mm, with explicit empty-mask rules.

Modules: :mod:`~livseg.metrics.overlap` (Dice, Jaccard, VOE, RVD),
:mod:`~livseg.metrics.surface` (boundary distances: ASSD, RMSD, MSD),
:mod:`~livseg.metrics.lesions` (6-connected lesions, LiTS merge and detection; rules
``"intended"`` and ``"codalab"``),
:mod:`~livseg.metrics.lits` (per case and data-set summary, empty-mask rules, definitions version),
:mod:`~livseg.metrics.bootstrap` (confidence intervals of per-case means, by case),
:mod:`~livseg.metrics.evaluate` (folders: pairing, checks, CSV + JSON output),
:mod:`~livseg.metrics.compare` (two predictions of the same cases: paired differences).
"""

from livseg.metrics.bootstrap import Interval, mean_interval, paired_difference_interval
from livseg.metrics.compare import Comparison, compare_folders, compare_results, write_comparison
from livseg.metrics.evaluate import (
    CasePair,
    evaluate_folders,
    format_table,
    pair_files,
    write_results,
)
from livseg.metrics.lesions import (
    LESION_RULES,
    DetectionCounts,
    LesionMatching,
    LesionPair,
    label_lesions,
    match_lesions,
)
from livseg.metrics.lits import (
    DEFAULT_PENALTY,
    DEFINITIONS_VERSION,
    INTERVAL_KEYS,
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
    "INTERVAL_KEYS",
    "LESION_RULES",
    "SUMMARY_KEYS",
    "CaseResult",
    "CasePair",
    "Comparison",
    "DetectionCounts",
    "EmptyMaskError",
    "EvaluationResult",
    "Interval",
    "LesionMatching",
    "LesionPair",
    "OverlapCounts",
    "SegmentationScores",
    "SurfaceDistances",
    "boundary",
    "compare_folders",
    "compare_results",
    "dice",
    "evaluate_case",
    "evaluate_cases",
    "evaluate_folders",
    "format_table",
    "jaccard",
    "label_lesions",
    "match_lesions",
    "mean_interval",
    "pair_files",
    "paired_difference_interval",
    "rvd",
    "segmentation_scores",
    "summarize",
    "surface_distances",
    "voe",
    "write_comparison",
    "write_results",
]
