"""Inference: the liver -> crop -> tumour cascade, its post-processing, and the shipped models.

* :class:`Cascade` (``cascade.py``): loaded liver + tumour models;
  ``Cascade.load(model, liver_model=..., tumour_model=..., device=...)`` and
  ``segment(volume, progress) -> SegmentationResult`` (labels in the input geometry).
* :func:`segment_files` (``run.py``): ``livseg segment``, batch of files/DICOM folders -> labels,
  measurements, overlays, DICOM-SEG.
* :func:`run_demo` (``demo.py``): ``livseg demo`` on a phantom.
* ``predictor.py``: batched slice prediction reproducing the training pre-processing.
* ``postprocess.py``: liver erosion -> largest component -> dilation; label merging.
* ``pretrained.py``: the shipped weights in ``livseg/weights/``.

Torch is imported only when models are loaded or run.
"""

from livseg.infer.cascade import Cascade, SegmentationResult
from livseg.infer.demo import DemoResult, run_demo
from livseg.infer.postprocess import largest_component, merge_labels, postprocess_liver
from livseg.infer.pretrained import (
    SHIPPED_MODELS,
    MissingWeightsError,
    available_models,
    locate,
)
from livseg.infer.run import CaseOutput, case_name, segment_case, segment_files

__all__ = [
    "Cascade",
    "SegmentationResult",
    "segment_files",
    "segment_case",
    "case_name",
    "CaseOutput",
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
