"""Torch datasets over slice caches, and foreground oversampling.

:class:`SliceDataset` reads single cached slices (memory-mapped, opened lazily in each DataLoader
worker), applies an optional :class:`~livseg.data.augment.Augmentation` and returns a dict::

    {"image": float32 (C, H, W), "label": int64 (H, W), "weight": float32 (H, W) (if cached),
     "case_id": str, "slice": int (canonical z index of the slice)}

Augmentation randomness is a pure function of ``(seed, epoch, index)``, so results do not depend
on the number of workers or on which worker served an item; call :meth:`SliceDataset.set_epoch`
every epoch to get fresh augmentations.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from livseg.data.augment import Augmentation
from livseg.data.cache import SliceCache

logger = logging.getLogger(__name__)


class SliceDataset(Dataset):
    """Slices of a :class:`SliceCache` as training samples.

    Args:
        cache: A built slice cache.
        case_ids: Cases to include (e.g. one fold's training cases); default all cases of
            ``cache``.
        augment: Augmentation applied to every sample, or None.
        seed: Base seed of the augmentation randomness.
        with_weight: Return the cached weight map when there is one.
    """

    def __init__(
        self,
        cache: SliceCache,
        case_ids: Sequence[str] | None = None,
        augment: Augmentation | None = None,
        seed: int = 0,
        with_weight: bool = True,
    ) -> None:
        self.cache = cache if case_ids is None else cache.subset(list(case_ids))
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self.with_weight = with_weight and self.cache.settings.weight_map

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.cache)

    def read(self, i: int) -> tuple[str, int, np.ndarray, np.ndarray, np.ndarray | None]:
        """The cached slice ``i`` before augmentation.

        Returns:
            ``(case_id, row, image (C, H, W) float32, label (H, W), weight (H, W) or None)``;
            ``row`` indexes the case's cached slices.
        """
        if not 0 <= i < len(self):
            raise IndexError(f"slice {i} out of range for {len(self)} slices")
        case_id, row = self.cache.locate(i)
        case = self.cache[case_id]
        image = np.array(case.image[row], dtype=np.float32)
        label = np.array(case.label[row])
        weight = np.array(case.weight[row], dtype=np.float32) if self.with_weight else None
        return case_id, row, image, label, weight

    def item(
        self,
        case_id: str,
        row: int,
        image: np.ndarray,
        label: np.ndarray,
        weight: np.ndarray | None,
        **extra: np.ndarray,
    ) -> dict[str, Any]:
        """The sample dict (tensors) of one slice; ``extra`` arrays become float32 tensors."""
        out: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "label": torch.from_numpy(np.ascontiguousarray(label).astype(np.int64)),
            **{
                k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
                for k, v in extra.items()
            },
            "case_id": case_id,
            "slice": int(self.cache[case_id].meta["slices"][row]),
        }
        if weight is not None:
            out["weight"] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        case_id, row, image, label, weight = self.read(i)
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, int(i)))
            image, label, weight = self.augment(image, label, weight, rng)
        return self.item(case_id, row, image, label, weight)

    def foreground_flags(self, foreground: Literal["liver", "tumour"] = "liver") -> np.ndarray:
        """(len(self),) bool: which slices contain the foreground (after resizing)."""
        return self.cache.slice_counts(foreground) > 0

    def sample_weights(
        self, foreground: Literal["liver", "tumour"] = "liver", fraction: float = 0.5
    ) -> np.ndarray:
        """Per-slice sampling weights so that foreground slices make up ``fraction`` of draws.

        Args:
            foreground: Which structure defines a foreground slice.
            fraction: Expected share of foreground slices among draws, in (0, 1).

        Returns:
            (len(self),) float64 weights summing to 1. When all or no slices are foreground the
            weights are uniform.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        fg = self.foreground_flags(foreground)
        n_fg, n = int(fg.sum()), fg.size
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        if n_fg in (0, n):
            return np.full(n, 1.0 / n)
        return np.where(fg, fraction / n_fg, (1.0 - fraction) / (n - n_fg))

    def make_sampler(
        self,
        foreground: Literal["liver", "tumour"] = "liver",
        fraction: float = 0.5,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> WeightedRandomSampler:
        """A sampler oversampling foreground slices (with replacement).

        Args:
            foreground: Which structure defines a foreground slice.
            fraction: Expected share of foreground slices among draws.
            num_samples: Draws per epoch (default: the dataset length).
            generator: Torch generator for reproducible draws.
        """
        w = self.sample_weights(foreground, fraction)
        return WeightedRandomSampler(
            torch.as_tensor(w, dtype=torch.double),
            num_samples=num_samples or len(self),
            replacement=True,
            generator=generator,
        )
