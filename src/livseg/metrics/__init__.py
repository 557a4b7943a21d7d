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

from __future__ import annotations

import importlib
from typing import Any

# name -> submodule: imported on first use, so that e.g. `livseg segment`, which needs only
# the lesion labelling, does not import the surface distances, evaluation and comparison.
_LAZY = {
    "boundary": "surface",
    "CasePair": "evaluate",
    "CaseResult": "lits",
    "compare_folders": "compare",
    "compare_results": "compare",
    "Comparison": "compare",
    "DEFAULT_PENALTY": "lits",
    "DEFINITIONS_VERSION": "lits",
    "DetectionCounts": "lesions",
    "dice": "overlap",
    "EmptyMaskError": "surface",
    "evaluate_case": "lits",
    "evaluate_cases": "lits",
    "evaluate_folders": "evaluate",
    "EvaluationResult": "lits",
    "format_table": "evaluate",
    "Interval": "bootstrap",
    "INTERVAL_KEYS": "lits",
    "jaccard": "overlap",
    "label_lesions": "lesions",
    "LESION_RULES": "lesions",
    "LesionMatching": "lesions",
    "LesionPair": "lesions",
    "match_lesions": "lesions",
    "mean_interval": "bootstrap",
    "OverlapCounts": "overlap",
    "pair_files": "evaluate",
    "paired_difference_interval": "bootstrap",
    "rvd": "overlap",
    "segmentation_scores": "lits",
    "SegmentationScores": "lits",
    "summarize": "lits",
    "SUMMARY_KEYS": "lits",
    "surface_distances": "surface",
    "SurfaceDistances": "surface",
    "voe": "overlap",
    "write_comparison": "compare",
    "write_results": "evaluate",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"livseg.metrics.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'livseg.metrics' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
