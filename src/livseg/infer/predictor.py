"""Slice-wise prediction of a foreground probability over a canonical CT volume, in batches.

A :class:`SlicePredictor` wraps one trained network and the pre-processing it was trained with
(:class:`livseg.data.cache.PreprocessSettings`, saved in the checkpoint's ``config.json``). For a
batch of axial slices it reproduces the training pipeline exactly: gather each slice with its
2.5-D context (offset-major channels, end slices replicated), apply the intensity pipeline on the
full slices (per-slice histogram equalisation, or volume min-max with the *whole volume's* HU
range), crop the in-plane box (the whole slice for the liver stage, the liver box for the tumour
stage), resize to ``(size, size)``, run the network, take the foreground probability and resize
it back to the box. Only one batch is ever held in float: memory does not grow with the number of
slices (512x512x1000 volumes work).

Optional test-time augmentation (``tta=True``) averages the probabilities of the slice and of its
left-right mirror.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from livseg.data.cache import preprocess_slices
from livseg.errors import LivsegError
from livseg.preprocess.orientation import Reorientation, canonical_reorientation
from livseg.preprocess.resample import resize_slices
from livseg.volume import Volume

log = logging.getLogger("livseg.infer.predictor")

AIR_HU = -1024.0
"""Value replacing NaN voxels (air)."""

Progress = Callable[[int, int], None]
"""Progress callback ``(done, total)`` in slices."""


@dataclass(frozen=True)
class VolumeStats:
    """Whole-volume intensity statistics, computed once in chunks (NaN ignored).

    Attributes:
        hu_min: minimum HU over the finite voxels.
        hu_max: maximum HU over the finite voxels.
        n_nan: number of non-finite voxels (replaced by :data:`AIR_HU` in every batch).
    """

    hu_min: float
    hu_max: float
    n_nan: int

    @property
    def value_range(self) -> tuple[float, float]:
        """(min, max) HU, as the min-max pipelines take it."""
        return self.hu_min, self.hu_max


def canonical_view(volume: Volume) -> tuple[np.ndarray, Reorientation]:
    """A (Z, Y, X) *view* (no copy) of ``volume.array`` in the canonical LPS layout.

    Returns:
        (view, reorientation); ``reorientation.undo`` maps canonical arrays back.
    """
    reo = canonical_reorientation(volume)
    view = np.transpose(volume.array, reo.perm)
    flips = tuple(d for d in range(3) if reo.flip[d])
    if flips:
        view = np.flip(view, axis=flips)
    return view, reo


def volume_stats(array: np.ndarray, chunk: int = 32) -> VolumeStats:
    """Min, max and non-finite count of a (Z, Y, X) array, streamed over ``chunk`` slices.

    Args:
        array: (Z, Y, X) HU (a view is fine).
        chunk: slices per step (bounds the temporary memory).

    Returns:
        :class:`VolumeStats`; min = max = AIR_HU when no voxel is finite.
    """
    lo, hi, bad = np.inf, -np.inf, 0
    for start in range(0, array.shape[0], chunk):
        block = np.asarray(array[start : start + chunk], dtype=np.float32)
        finite = np.isfinite(block)
        n_bad = int(block.size - np.count_nonzero(finite))
        bad += n_bad
        if n_bad:
            block = block[finite]
        if block.size:
            lo = min(lo, float(block.min()))
            hi = max(hi, float(block.max()))
    if not np.isfinite(lo):
        lo = hi = AIR_HU
    return VolumeStats(lo, hi, bad)


def settings_from_config(config: Any, source: str = "config.json"):
    """The :class:`~livseg.data.cache.PreprocessSettings` stored in a checkpoint config.

    Accepts the training config object or its JSON dict; the settings are looked up under
    ``preprocess`` (also ``preprocessing`` or ``data``), as a dataclass or a dict.

    Raises:
        LivsegError: no pre-processing settings in the config (the message names ``source``).
    """
    from livseg.data.cache import PreprocessSettings

    for key in ("data", "preprocess"):
        if isinstance(getattr(config, key, None), PreprocessSettings):
            return getattr(config, key)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, dict):
        raise LivsegError(f"{source}: unexpected checkpoint config type {type(config).__name__}")
    for key in ("preprocess", "preprocessing", "data"):
        sub = config.get(key)
        if isinstance(sub, PreprocessSettings):
            return sub
        if dataclasses.is_dataclass(sub) and not isinstance(sub, type):
            sub = dataclasses.asdict(sub)
        if isinstance(sub, dict) and "pipeline" in sub:
            fields = {f.name for f in dataclasses.fields(PreprocessSettings)}
            return PreprocessSettings.from_dict({k: v for k, v in sub.items() if k in fields})
    raise LivsegError(
        f"{source}: checkpoint config holds no pre-processing settings "
        "(expected a 'preprocess' section with a 'pipeline')"
    )


def size_multiple(model: Any) -> int:
    """The divisor a network needs for H and W (``2**depth``), from its attributes."""
    if hasattr(model, "multiple"):
        return int(model.multiple)
    if hasattr(model, "levels"):
        return 2 ** int(model.levels)
    if hasattr(model, "depth"):
        return 2 ** int(model.depth)
    return 1


class SlicePredictor:
    """Foreground probability of axial slices with one trained network.

    Args:
        model: network returning logits (B, C, H', W'); put in eval mode here.
        settings: the pre-processing it was trained with (``PreprocessSettings``).
        device: torch device to run on.
        batch_size: slices per forward pass.
        tta: average with the left-right mirrored prediction.
        name: name used in log messages (e.g. the checkpoint folder).
    """

    def __init__(
        self,
        model,
        settings,
        device: Any = "cpu",
        batch_size: int = 8,
        tta: bool = False,
        name: str = "model",
    ) -> None:
        import torch

        if batch_size < 1:
            raise LivsegError(f"batch size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.settings = settings
        self.batch_size = int(batch_size)
        self.tta = bool(tta)
        self.name = name
        size = int(settings.size)
        mult = size_multiple(model)
        if size % mult:
            raise LivsegError(
                f"{name}: working size {size} is not divisible by {mult}, which the network needs"
            )

    @property
    def context(self) -> int:
        return int(self.settings.context)

    def _gather(self, hu: np.ndarray, ks: np.ndarray, stats: VolumeStats) -> np.ndarray:
        """(b,) slice indices -> (b * (2c+1), H, W) float32 HU with context, NaN replaced."""
        c = self.context
        z = hu.shape[0]
        src = np.clip(ks[:, None] + np.arange(-c, c + 1)[None, :], 0, z - 1).ravel()
        block = np.asarray(hu[src], dtype=np.float32)  # fancy indexing: a copy
        if stats.n_nan:
            np.nan_to_num(block, copy=False, nan=AIR_HU, posinf=AIR_HU, neginf=AIR_HU)
        return block

    def _forward(self, x: np.ndarray) -> np.ndarray:
        import torch

        from livseg.models import foreground_probability

        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
            prob = foreground_probability(self.model(t))
            if self.tta:
                flipped = foreground_probability(self.model(torch.flip(t, dims=[-1])))
                prob = 0.5 * (prob + torch.flip(flipped, dims=[-1]))
            if prob.dim() == 4:
                prob = prob[:, 0]
            return prob.float().cpu().numpy()

    def predict(
        self,
        hu: np.ndarray,
        slices: Sequence[int],
        stats: VolumeStats,
        box: tuple[int, int, int, int] | None = None,
        progress: Progress | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Predict slices batch by batch.

        Args:
            hu: (Z, Y, X) HU array in canonical layout (a view is fine; it is not modified).
            slices: canonical slice indices to predict.
            stats: whole-volume statistics (:func:`volume_stats`).
            box: in-plane crop (y0, y1, x0, x1), exclusive ends, in pixels; None = whole slice.
            progress: called with (slices done, total) after each batch.

        Yields:
            (indices (b,), probability (b, y1-y0, x1-x0) float32 in [0, 1]) per batch.
        """
        ks_all = np.asarray(list(slices), dtype=np.int64)
        y0, y1, x0, x1 = box if box is not None else (0, hu.shape[1], 0, hu.shape[2])
        size = int(self.settings.size)
        n_ctx = 2 * self.context + 1
        total = int(ks_all.size)
        for start in range(0, total, self.batch_size):
            ks = ks_all[start : start + self.batch_size]
            block = self._gather(hu, ks, stats)
            chan = preprocess_slices(block, self.settings, stats.value_range)  # (b*n, C0, H, W)
            del block
            chan = chan[..., y0:y1, x0:x1]
            chan = np.clip(resize_slices(chan, size, "image"), 0.0, 1.0)
            x = chan.reshape(len(ks), n_ctx * chan.shape[1], size, size)
            prob = self._forward(x)  # (b, h', w') at the network's output size
            prob = resize_slices(prob, (y1 - y0, x1 - x0), "image")
            yield ks, np.clip(prob, 0.0, 1.0)
            if progress is not None:
                progress(min(start + self.batch_size, total), total)
