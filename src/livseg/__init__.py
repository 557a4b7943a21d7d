"""livseg: liver and liver-tumour segmentation in abdominal CT.

Labels follow the LiTS convention: 0 background, 1 liver, 2 tumour.

The Python API (:mod:`livseg.api`), imported on first use so that ``import livseg`` stays
instant (no torch, no numpy)::

    livseg.segment(ct, model="crunet", device="auto")  -> Segmentation (labels, measurements,
                                                          warnings, scores; .save(dir))
    livseg.Segmenter(model, device=..., options=...)   models loaded once, .segment(ct)
    livseg.SegmentOptions(liver_model=..., tta=...)    model loading options
    livseg.segment_cohort(paths, outdir)               many CTs + cohort.csv; torchrun shards
    livseg.evaluate(pred, ref)                         LiTS scores (two folders, or one pair)
    livseg.read(path) / livseg.write(volume, path)     livseg.io.read_volume / write_volume
    livseg.Volume                                      the image/label container
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

LABEL_BACKGROUND = 0
LABEL_LIVER = 1
LABEL_TUMOUR = 2

_LAZY = {
    "segment": ("livseg.api", "segment"),
    "segment_cohort": ("livseg.api", "segment_cohort"),
    "Segmenter": ("livseg.api", "Segmenter"),
    "SegmentOptions": ("livseg.api", "SegmentOptions"),
    "Segmentation": ("livseg.api", "Segmentation"),
    "evaluate": ("livseg.api", "evaluate"),
    "read": ("livseg.io", "read_volume"),
    "write": ("livseg.io", "write_volume"),
    "Volume": ("livseg.volume", "Volume"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'livseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
