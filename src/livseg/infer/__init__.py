"""Inference: the liver -> crop -> tumour cascade, its post-processing, and the shipped models.

* :class:`Cascade` (``cascade.py``): loaded liver + tumour models;
  ``Cascade.load(model, liver_model=..., tumour_model=..., device=...)`` and
  ``segment(volume, progress) -> SegmentationResult`` (labels in the input geometry).
* :func:`segment_files` (``run.py``): ``livseg segment``, batch of files/DICOM folders -> labels,
  measurements, overlays, DICOM-SEG; :func:`segment_case` does one input given by its path;
  :func:`segment_cohort` adds ``cohort.csv``, resuming and torchrun sharding (``cohort.py``).
* ``case.py``: the steps of one case, :func:`read_ct` (read + check), :func:`segment_ct`
  (-> :class:`Segmentation`) and :meth:`Segmentation.save`; they also serve the Python API
  (:mod:`livseg.api`).
* :func:`run_demo` (``demo.py``): ``livseg demo`` on a phantom.
* ``predictor.py``: batched slice prediction reproducing the training pre-processing.
* ``postprocess.py``: liver erosion -> largest component -> dilation; label merging.
* ``pretrained.py``: the shipped weights in ``livseg/weights/``.

Importing this package is cheap (no torch, no scipy): each name below imports its module on first
use, so ``livseg.infer.pretrained`` serves the CLI's help without loading the cascade. Torch is
imported only when models are loaded or run.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Cascade",
    "SegmentationResult",
    "segment_files",
    "segment_cohort",
    "CohortResult",
    "segment_case",
    "case_name",
    "Segmentation",
    "SegmentOptions",
    "SaveOptions",
    "CtInput",
    "read_ct",
    "segment_ct",
    "run_demo",
    "DemoResult",
    "postprocess_liver",
    "largest_component",
    "merge_labels",
    "SHIPPED_MODELS",
    "MissingWeightsError",
    "available_models",
    "locate",
]

_WHERE = {
    "Cascade": "cascade",
    "SegmentationResult": "cascade",
    "segment_files": "run",
    "segment_cohort": "run",
    "CohortResult": "run",
    "segment_case": "run",
    "case_name": "case",
    "Segmentation": "case",
    "SegmentOptions": "case",
    "SaveOptions": "case",
    "CtInput": "case",
    "read_ct": "case",
    "segment_ct": "case",
    "run_demo": "demo",
    "DemoResult": "demo",
    "postprocess_liver": "postprocess",
    "largest_component": "postprocess",
    "merge_labels": "postprocess",
    "SHIPPED_MODELS": "pretrained",
    "MissingWeightsError": "pretrained",
    "available_models": "pretrained",
    "locate": "pretrained",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        module = importlib.import_module(f"livseg.infer.{_WHERE[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
