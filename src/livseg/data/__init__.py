"""Training data: slice caches, slice datasets, augmentation, cross-validation splits.

Submodules:
    cache: :func:`build_slice_cache`, :class:`SliceCache` (keyed by
        :class:`livseg.preprocess.pipeline.PreprocessSettings`).
    dataset: :class:`SliceDataset` (torch Dataset of cached slices, foreground oversampling).
    augment: :class:`Augmentation` (geometric + intensity, deterministic per generator).
    splits: :func:`kfold_by_patient`, :func:`save_splits`, :func:`load_splits`.

Importing this package does not import torch; ``SliceDataset`` is loaded on first use.
"""

from __future__ import annotations

from typing import Any

from livseg.data.augment import Augmentation
from livseg.data.cache import CachedCase, SliceCache, build_slice_cache
from livseg.data.splits import kfold_by_patient, load_splits, save_splits

__all__ = [
    "Augmentation",
    "CachedCase",
    "SliceCache",
    "SliceDataset",
    "build_slice_cache",
    "kfold_by_patient",
    "load_splits",
    "save_splits",
]


def __getattr__(name: str) -> Any:
    if name == "SliceDataset":
        from livseg.data.dataset import SliceDataset

        return SliceDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
